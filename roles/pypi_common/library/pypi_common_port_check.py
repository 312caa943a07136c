#!/usr/bin/python
"""Report which processes listen on a TCP port, from /proc (read-only)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_common_port import who_listens

DOCUMENTATION = r"""
module: pypi_common_port_check
short_description: Report which processes listen on a TCP port
description:
  - Reads /proc/net/tcp and /proc/net/tcp6 and the open file descriptors in /proc. Changes nothing.
options:
  port:
    description: TCP port to look for.
    type: int
    required: true
author: airgap-pypi
"""

RETURN = r"""
in_use:
  description: Whether any socket listens on the port.
  type: bool
  returned: always
owners:
  description: The listening processes that could be read, each with pid and cmdline.
  type: list
  elements: dict
  returned: always
users:
  description: Names (or uids) of the users owning the listening sockets.
  type: list
  elements: str
  returned: always
"""


def main() -> None:
    module = AnsibleModule(argument_spec={"port": {"type": "int", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, **who_listens(module.params["port"]))


if __name__ == "__main__":
    main()
