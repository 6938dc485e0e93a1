"""An out-of-band change made with Microsoft's official client (azure-mgmt-compute): opens a
sealed VM to extensions and installs one (Run Command), as an operator with the Portal would.

First it tries the extension on the sealed VM, which ARM must refuse (409
OperationNotAllowed); then it PATCHes osProfile.allowExtensionOperations to true and installs
the extension, each long-running operation polled by the client's own poller. Usage:
reopen_vm.py URL SUBSCRIPTION GROUP VM LOCATION. Prints one line per step; any unexpected
answer is an exception (exit != 0).
"""

import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as cm

url, sub, group, name, location = sys.argv[1:6]


class StaticToken:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-token", int(time.time()) + 3600)


plain = dict(enforce_https=False)
compute = ComputeManagementClient(StaticToken(), sub, base_url=url,
                                  credential_scopes=["https://management.azure.com/.default"], polling_interval=0.05)

extension = cm.VirtualMachineExtension(location=location, publisher="Microsoft.CPlat.Core",
                                       type_properties_type="RunCommandLinux", type_handler_version="1.0")
try:
    compute.virtual_machine_extensions.begin_create_or_update(group, name, "run", extension, **plain).result(timeout=60)
    raise SystemExit("an extension was installed on a VM that disallows extension operations")
except HttpResponseError as e:
    assert e.status_code == 409 and e.error.code == "OperationNotAllowed", e
    print("extension refused on the sealed VM:", e.error.code)

update = cm.VirtualMachineUpdate(os_profile=cm.OSProfile(allow_extension_operations=True))
vm = compute.virtual_machines.begin_update(group, name, update, **plain).result(timeout=60)
assert vm.os_profile.allow_extension_operations is True, vm.os_profile
print("allowExtensionOperations:", vm.os_profile.allow_extension_operations)

made = compute.virtual_machine_extensions.begin_create_or_update(group, name, "run", extension, **plain).result(timeout=60)
assert made.provisioning_state == "Succeeded" and made.type_properties_type == "RunCommandLinux", made
got = compute.virtual_machines.get(group, name, **plain)
assert [r.name for r in got.resources] == ["run"], got.resources
print("extension installed:", made.name, made.provisioning_state)
