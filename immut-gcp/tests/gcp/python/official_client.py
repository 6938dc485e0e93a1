"""Google's official Compute client (google-cloud-compute) against the fake Compute API.

Lists (with a filter, paged), gets, inserts, bulk-inserts and deletes instances, each
long-running operation polled to DONE by the client itself. Usage: official_client.py URL PROJECT ZONE.
Prints one line per step; any client error is an exception, and the caller fails on exit != 0.
"""

import sys

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

url, project, zone = sys.argv[1:4]
kw = dict(credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=url), transport="rest")
instances = compute_v1.InstancesClient(**kw)
# The client builds its operation pollers with the default endpoint: point them at the fake too.
instances._transport._extended_operations_services["zone_operations"] = compute_v1.ZoneOperationsClient(**kw)

image = f"projects/{project}/global/images/web-v1"
disks = [compute_v1.AttachedDisk(boot=True, auto_delete=True,
                                 initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image))]
nics = [compute_v1.NetworkInterface(network="global/networks/default")]


def listed(page_size=None):
    request = compute_v1.ListInstancesRequest(project=project, zone=zone, filter="labels.team = py")
    if page_size:
        request.max_results = page_size
    return sorted(i.name for i in instances.list(request=request))


one = compute_v1.Instance(name="py-one", machine_type=f"zones/{zone}/machineTypes/e2-small",
                          labels={"team": "py"}, disks=disks, network_interfaces=nics)
op = instances.insert(request=compute_v1.InsertInstanceRequest(
    project=project, zone=zone, instance_resource=one, request_id="3c1a8f2e-2f6b-4c6e-9d3e-6f0a1b2c3d4e"))
op.result(timeout=60)
assert not op.error_code, op.error_message
got = instances.get(project=project, zone=zone, instance="py-one")
assert got.status == "RUNNING" and got.network_interfaces[0].network_i_p, got
print("insert and get:", got.name, got.status, got.network_interfaces[0].network_i_p)

bulk = compute_v1.BulkInsertInstanceResource(
    count=3, min_count=3, name_pattern="py-####",
    instance_properties=compute_v1.InstanceProperties(machine_type="e2-small", disks=disks,
                                                      network_interfaces=nics, labels={"team": "py"}))
op = instances.bulk_insert(project=project, zone=zone, bulk_insert_instance_resource_resource=bulk)
op.result(timeout=60)
assert not op.error_code, op.error_message
names = listed(page_size=2)
assert names == ["py-0001", "py-0002", "py-0003", "py-one"], names
print("bulk insert and list, paged by 2:", names)

for name in names:
    instances.delete(project=project, zone=zone, instance=name).result(timeout=60)
assert listed() == [], listed()
print("deleted: none left")
