//! Paging with opaque tokens, the way Google and Azure list APIs page.
//!
//! Items are paged by key, not by offset: a token holds the key of the last item served, so an
//! item created or deleted between two pages neither shifts nor repeats the others. A token is
//! bound to the query that produced it (its scope: the path and the filter), so a token handed
//! to another query is refused, as the clouds refuse it.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// One page of results and the token of the next, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The token of the next page; `None` on the last.
    pub next_token: Option<String>,
}

/// Why a page cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    /// The token is malformed or belongs to another query.
    #[error("the page token is invalid or belongs to another query")]
    InvalidToken,
    /// The page size is above the largest the API allows.
    #[error("the page size {asked} is above the maximum of {max}")]
    PageSizeTooLarge {
        /// What was asked.
        asked: u64,
        /// The largest allowed.
        max: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Token {
    /// A hash of the scope.
    s: u64,
    /// The key of the last item served.
    k: String,
}

fn scope_hash(scope: &str) -> u64 {
    // FNV-1a: stable across runs and processes, unlike the std hasher.
    scope.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Serves one page of `items`, which must be sorted by `key` with unique keys. `size` is the
/// page size asked for (`None` or 0: `default`), at most `max`; `token` the page token given.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    scope: &str,
    size: Option<u64>,
    token: Option<&str>,
    default: u64,
    max: u64,
) -> Result<Page<T>, PagingError> {
    let size = match size {
        None | Some(0) => default,
        Some(n) if n > max => return Err(PagingError::PageSizeTooLarge { asked: n, max }),
        Some(n) => n,
    } as usize;
    let after = match token.filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => {
            let raw =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).map_err(|_| PagingError::InvalidToken)?;
            let token: Token = serde_json::from_slice(&raw).map_err(|_| PagingError::InvalidToken)?;
            if token.s != scope_hash(scope) {
                return Err(PagingError::InvalidToken);
            }
            Some(token.k)
        }
    };
    let mut rest: Vec<T> = match &after {
        Some(after) => items.into_iter().filter(|i| key(i).as_str() > after.as_str()).collect(),
        None => items,
    };
    if rest.len() <= size {
        return Ok(Page { items: rest, next_token: None });
    }
    rest.truncate(size);
    let last = key(rest.last().expect("size is at least 1"));
    let token = serde_json::to_vec(&Token { s: scope_hash(scope), k: last }).expect("a token serializes");
    Ok(Page { items: rest, next_token: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("vm-{i:03}")).collect()
    }

    #[test]
    fn pages_follow_tokens_to_the_end() {
        let mut token = None;
        let mut seen = Vec::new();
        loop {
            let p = page(names(7), Clone::clone, "list", Some(3), token.as_deref(), 500, 500).unwrap();
            seen.extend(p.items);
            match p.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, names(7));
    }

    #[test]
    fn an_item_deleted_between_pages_shifts_nothing() {
        let first = page(names(6), Clone::clone, "list", Some(3), None, 500, 500).unwrap();
        let mut fewer = names(6);
        fewer.remove(0);
        let second = page(fewer, Clone::clone, "list", Some(3), first.next_token.as_deref(), 500, 500).unwrap();
        assert_eq!(second.items, vec!["vm-003", "vm-004", "vm-005"]);
    }

    #[test]
    fn tokens_of_another_query_and_oversized_pages_are_refused() {
        let first = page(names(6), Clone::clone, "list a", Some(3), None, 500, 500).unwrap();
        let other = page(names(6), Clone::clone, "list b", Some(3), first.next_token.as_deref(), 500, 500);
        assert_eq!(other, Err(PagingError::InvalidToken));
        assert_eq!(page(names(1), Clone::clone, "x", None, Some("%%%"), 500, 500), Err(PagingError::InvalidToken));
        assert_eq!(
            page(names(1), Clone::clone, "x", Some(501), None, 500, 500),
            Err(PagingError::PageSizeTooLarge { asked: 501, max: 500 })
        );
        assert_eq!(page(names(3), Clone::clone, "x", Some(0), None, 2, 500).unwrap().items.len(), 2);
    }
}
