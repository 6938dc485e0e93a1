"""An out-of-band change made with Google's official Compute client (google-cloud-compute):
adds an `ssh-keys` item to one instance's metadata with instances.setMetadata.

First it sends a stale fingerprint, which the API must refuse with 412 conditionNotMet; then
the fingerprint it just read, keeping every other item. Usage: set_metadata.py URL PROJECT ZONE
INSTANCE. Prints one line per step; any unexpected answer is an exception (exit != 0).
"""

import sys

from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

url, project, zone, name = sys.argv[1:5]
kw = dict(credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=url), transport="rest")
instances = compute_v1.InstancesClient(**kw)
instances._transport._extended_operations_services["zone_operations"] = compute_v1.ZoneOperationsClient(**kw)

current = instances.get(project=project, zone=zone, instance=name).metadata
items = [compute_v1.Items(key=i.key, value=i.value) for i in current.items]
items.append(compute_v1.Items(key="ssh-keys", value="ops:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutOfBand ops"))

try:
    instances.set_metadata(project=project, zone=zone, instance=name,
                           metadata_resource=compute_v1.Metadata(fingerprint="c3RhbGU=", items=items))
    raise SystemExit("a stale fingerprint was accepted")
except exceptions.PreconditionFailed as e:
    assert "conditionNotMet" in str(e) or "fingerprint" in str(e), e
    print("stale fingerprint refused:", e.code)

op = instances.set_metadata(project=project, zone=zone, instance=name,
                            metadata_resource=compute_v1.Metadata(fingerprint=current.fingerprint, items=items))
op.result(timeout=60)
assert not op.error_code, op.error_message
after = instances.get(project=project, zone=zone, instance=name).metadata
assert any(i.key == "ssh-keys" for i in after.items), after
assert after.fingerprint != current.fingerprint, "the fingerprint changes with the metadata"
print("ssh-keys added; fingerprint changed")
