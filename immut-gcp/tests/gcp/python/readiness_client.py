"""Google's official Compute client (google-cloud-compute) against the fake's image and region
endpoints, the ones rollback readiness reads: images.get (a 404 for an image that is not
there), images.deprecate (a global operation the client polls to DONE itself) and regions.get
with its quotas. Usage: readiness_client.py URL PROJECT REGION. Prints one line per step; any
client error is an exception, and the caller fails on exit != 0.
"""

import sys

from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

url, project, region = sys.argv[1:4]
kw = dict(credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=url), transport="rest")
images = compute_v1.ImagesClient(**kw)
# The client builds its operation poller with the default endpoint: point it at the fake too.
images._transport._extended_operations_services["global_operations"] = compute_v1.GlobalOperationsClient(**kw)
regions = compute_v1.RegionsClient(**kw)

got = images.get(project=project, image="web-v1")
assert got.name == "web-v1" and got.status == "READY" and not got.deprecated.state, got
print("get:", got.name, got.status)

status = compute_v1.DeprecationStatus(state="DEPRECATED", replacement=f"projects/{project}/global/images/web-v2")
op = images.deprecate(project=project, image="web-v1", deprecation_status_resource=status)
op.result(timeout=60)
assert not op.error_code, op.error_message
got = images.get(project=project, image="web-v1")
assert got.deprecated.state == "DEPRECATED" and got.deprecated.replacement.endswith("web-v2"), got
print("deprecate:", got.name, got.deprecated.state)

try:
    images.get(project=project, image="not-there")
    raise AssertionError("a missing image was found")
except exceptions.NotFound:
    print("get of a missing image: 404")

got = regions.get(project=project, region=region)
quotas = {q.metric: (q.limit, q.usage) for q in got.quotas}
assert got.name == region and got.status == "UP" and got.zones, got
assert quotas["CPUS"][0] > 0 and quotas["INSTANCES"][1] == 0, quotas
print("region:", got.name, "CPUS", quotas["CPUS"], "INSTANCES", quotas["INSTANCES"])
