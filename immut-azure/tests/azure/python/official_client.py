"""Microsoft's official management clients (azure-mgmt-compute, azure-mgmt-network) against the fake ARM.

Creates VMs (each long-running operation polled to its end by the client's own poller), gets
one, lists them (paged: the client follows nextLink), creates a load balancer and updates its
backend pool, reads a rule's health, deletes the VMs (the poller follows the delete's
operation) and the load balancer. Usage:
official_client.py URL SUBSCRIPTION GROUP LOCATION IMAGE_ID SUBNET_ID.
Prints one line per step; any client error is an exception, and the caller fails on exit != 0.
"""

import sys
import time

from azure.core.credentials import AccessToken
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as cm
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network import models as nm

url, sub, group, location, image, subnet = sys.argv[1:7]
vnet = subnet.split("/subnets/")[0]


class StaticToken:
    """A token credential: what azure-identity's credentials are to the clients."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-token", int(time.time()) + 3600)


# The fake serves plain http on 127.0.0.1. azure-core refuses a bearer token over http unless
# the request opts out with `enforce_https=False`, the per-request option it has for this.
plain = dict(enforce_https=False)
kw = dict(base_url=url, credential_scopes=["https://management.azure.com/.default"], polling_interval=0.05)
compute = ComputeManagementClient(StaticToken(), sub, **kw)
network = NetworkManagementClient(StaticToken(), sub, **kw)


def vm(name):
    return cm.VirtualMachine(
        location=location,
        tags={"team": "py"},
        hardware_profile=cm.HardwareProfile(vm_size="Standard_B2s"),
        storage_profile=cm.StorageProfile(
            image_reference=cm.ImageReference(id=image),
            os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete"),
        ),
        os_profile=cm.OSProfile(computer_name=name, admin_username="azureuser",
                                linux_configuration=cm.LinuxConfiguration(disable_password_authentication=True)),
        network_profile=cm.NetworkProfile(
            network_api_version="2020-11-01",
            network_interface_configurations=[cm.VirtualMachineNetworkInterfaceConfiguration(
                name=f"{name}-nic", primary=True, delete_option="Delete",
                ip_configurations=[cm.VirtualMachineNetworkInterfaceIPConfiguration(
                    name="ipconfig1", subnet=cm.SubResource(id=subnet))],
            )],
        ),
    )


names = ["py-0", "py-1", "py-2"]
pollers = [compute.virtual_machines.begin_create_or_update(group, n, vm(n), **plain) for n in names]
made = [p.result(timeout=60) for p in pollers]
assert [v.provisioning_state for v in made] == ["Succeeded"] * 3, [v.provisioning_state for v in made]
assert [v.name for v in made] == names, [v.name for v in made]
print("created:", ", ".join(f"{v.name} {v.provisioning_state}" for v in made))

got = compute.virtual_machines.get(group, "py-0", expand="instanceView", **plain)
assert got.hardware_profile.vm_size == "Standard_B2s" and got.tags == {"team": "py"}, got
assert got.storage_profile.image_reference.id.lower() == image.lower(), got.storage_profile.image_reference
codes = [s.code for s in got.instance_view.statuses]
assert codes[0] == "ProvisioningState/succeeded" and codes[1].startswith("PowerState/"), codes
nic_id = got.network_profile.network_interfaces[0].id
print("get:", got.name, got.provisioning_state, codes)

listed = sorted(v.name for v in compute.virtual_machines.list(group, **plain))
assert listed == names, listed
print("list, paged:", listed)

nic = network.network_interfaces.get(group, nic_id.rsplit("/", 1)[1], **plain)
ip = nic.ip_configurations[0].private_ip_address
assert ip and nic.virtual_machine.id.lower().endswith("/virtualmachines/py-0"), nic
print("nic:", nic.name, ip)

lb_path = f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Network/loadBalancers/py-lb"
child = lambda kind, name: nm.SubResource(id=f"{lb_path}/{kind}/{name}")
lb = nm.LoadBalancer(
    location=location,
    sku=nm.LoadBalancerSku(name="Standard", tier="Regional"),
    frontend_ip_configurations=[nm.FrontendIPConfiguration(
        name="frontend", private_ip_allocation_method="Dynamic", subnet=nm.Subnet(id=subnet))],
    backend_address_pools=[nm.BackendAddressPool(name="blue", load_balancer_backend_addresses=[])],
    probes=[nm.Probe(name="http", protocol="Http", port=80, request_path="/healthz",
                     interval_in_seconds=5, number_of_probes=1)],
    load_balancing_rules=[nm.LoadBalancingRule(
        name="http", protocol="Tcp", frontend_port=80, backend_port=80,
        frontend_ip_configuration=child("frontendIPConfigurations", "frontend"),
        backend_address_pool=child("backendAddressPools", "blue"), probe=child("probes", "http"))],
)
lb = network.load_balancers.begin_create_or_update(group, "py-lb", lb, **plain).result(timeout=60)
assert lb.provisioning_state == "Succeeded" and lb.etag, lb
print("load balancer created:", lb.name, lb.etag)

# Update: read, add py-0 to the pool, put it back, as a portal or a script does.
lb = network.load_balancers.get(group, "py-lb", **plain)
lb.backend_address_pools[0].load_balancer_backend_addresses = [nm.LoadBalancerBackendAddress(
    name="py-0", ip_address=ip, virtual_network=nm.SubResource(id=vnet))]
before = lb.etag
lb = network.load_balancers.begin_create_or_update(group, "py-lb", lb, **plain).result(timeout=60)
assert lb.provisioning_state == "Succeeded" and lb.etag != before, (lb.provisioning_state, lb.etag, before)
pool = network.load_balancer_backend_address_pools.get(group, "py-lb", "blue", **plain)
members = [(a.name, a.ip_address) for a in pool.load_balancer_backend_addresses]
assert members == [("py-0", ip)], members
assert [r.id.rsplit("/", 1)[1] for r in pool.load_balancing_rules] == ["http"], pool.load_balancing_rules
print("pool updated:", pool.name, members)

health = network.load_balancer_load_balancing_rules.begin_health(group, "py-lb", "http", **plain).result(timeout=60)
assert [a.ip_address for a in health.load_balancer_backend_addresses] == [ip], health
assert health.up + health.down == 1, health
print("rule health:", [(a.ip_address, a.state) for a in health.load_balancer_backend_addresses])

pollers = [compute.virtual_machines.begin_delete(group, n, **plain) for n in names]
for p in pollers:
    assert p.result(timeout=60) is None
    assert p.status() == "Succeeded", p.status()
left = [v.name for v in compute.virtual_machines.list(group, **plain)]
assert left == [], left
network.load_balancers.begin_delete(group, "py-lb", **plain).result(timeout=60)
print("deleted: none left")
