"""Microsoft's official management client (azure-mgmt-compute) against the fake ARM's gallery
image version and usage endpoints, the ones rollback readiness reads: gets a version, updates
its publishing profile (an end of life, excludeFromLatest) and deletes it, each long-running
operation followed by the client's own poller, gets a 404 for it after, and lists the
location's usages (paged: the client follows nextLink). Usage:
readiness_client.py URL SUBSCRIPTION LOCATION IMAGE_ID.
Prints one line per step; any client error is an exception, and the caller fails on exit != 0.
"""

import datetime
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as cm

url, sub, location, image = sys.argv[1:5]
parts = image.split("/")
group, gallery, definition, version = parts[4], parts[8], parts[10], parts[12]


class StaticToken:
    """A token credential: what azure-identity's credentials are to the clients."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-token", int(time.time()) + 3600)


# The fake serves plain http on 127.0.0.1: azure-core needs `enforce_https=False` for a token.
plain = dict(enforce_https=False)
kw = dict(base_url=url, credential_scopes=["https://management.azure.com/.default"], polling_interval=0.05)
compute = ComputeManagementClient(StaticToken(), sub, **kw)
versions = compute.gallery_image_versions

got = versions.get(group, gallery, definition, version, **plain)
assert got.provisioning_state == "Succeeded" and not got.publishing_profile.exclude_from_latest, got
print("get:", got.name, got.provisioning_state)

update = cm.GalleryImageVersion(
    location=location,
    publishing_profile=cm.GalleryImageVersionPublishingProfile(
        end_of_life_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc), exclude_from_latest=True),
    storage_profile=cm.GalleryImageVersionStorageProfile(
        source=cm.GalleryArtifactVersionFullSource(id=f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/images/web")),
)
done = versions.begin_create_or_update(group, gallery, definition, version, update, **plain).result()
assert done.publishing_profile.exclude_from_latest and done.publishing_profile.end_of_life_date.year == 2025, done
print("update:", done.name, done.publishing_profile.end_of_life_date.isoformat())

usages = list(compute.usage.list(location, **plain))
by_name = {u.name.value: (u.current_value, u.limit) for u in usages}
assert by_name["cores"][1] > 0 and by_name["virtualMachines"][0] == 0, by_name
print("usages:", sorted(by_name))

versions.begin_delete(group, gallery, definition, version, **plain).result()
try:
    versions.get(group, gallery, definition, version, **plain)
    raise AssertionError("a deleted version was found")
except ResourceNotFoundError:
    print("deleted: 404")
