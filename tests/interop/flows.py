"""Multi-step client CLI flows shared by the interop tests (organization creation and
bootstrap, interactive greet/claim with SAS codes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .harness import ADMIN_TOKEN, ClientHome, HarnessError, InteractiveProcess, ServerProcess

PASSWORD = "Interop-P@ssw0rd"
BOOTSTRAP_URL_RE = re.compile(
    r"Bootstrap organization url: (parsec://127\.0\.0\.1:(\d+)/([\w-]+)\?action=bootstrap_organization&token=([0-9a-f]+)&no_ssl=true)"
)
INVITATION_URL_RE = re.compile(
    r"url: (parsec://127\.0\.0\.1:\d+/[\w-]+\?action=claim_(user|device)&token=([0-9a-f]+)&no_ssl=true)"
)
SAS_CHOICE_RE = re.compile(r"^\s*(\d+) - (\w+)\s*$", re.MULTILINE)


@dataclass
class BootstrappedOrg:
    org_id: str
    bootstrap_url: str
    device: str  # slughash prefix usable with -D
    email: str
    label: str


def create_organization(client: ClientHome, server: ServerProcess, org_id: str) -> str:
    """`parsec core create_organization` -> bootstrap URL."""
    result = client.cli(
        "create_organization", org_id, "--addr", server.addr, "--administration-token", ADMIN_TOKEN
    )
    match = BOOTSTRAP_URL_RE.search(result.stdout)
    if not match:
        raise HarnessError(f"no bootstrap URL in create_organization output\n{result}")
    return match.group(1)


def bootstrap_organization(
    client: ClientHome,
    bootstrap_url: str,
    email: str = "alice@example.com",
    label: str = "Alice",
    device_label: str = "alice-laptop",
) -> str:
    """`parsec core bootstrap_organization`; returns the new device's slughash prefix.

    The device label is typed at the prompt: 2.10.0's `--device-label` option passes a raw
    str where a DeviceLabel is expected and the command dies with AssertionError."""
    result = client.cli(
        "bootstrap_organization",
        bootstrap_url,
        "--human-label",
        label,
        "--human-email",
        email,
        "--password",
        PASSWORD,
        input=f"{device_label}\n",
    )
    match = re.search(r"Saving device (\w+)", result.stdout)
    if not match:
        raise HarnessError(f"no saved device in bootstrap_organization output\n{result}")
    return match.group(1)


def new_organization(client: ClientHome, server: ServerProcess, org_id: str) -> BootstrappedOrg:
    url = create_organization(client, server, org_id)
    device = bootstrap_organization(client, url)
    return BootstrappedOrg(org_id, url, device, "alice@example.com", "Alice")


def invite(client: ClientHome, device: str, *args: str) -> tuple[str, str]:
    """`invite_user EMAIL` / `invite_device` -> (invitation URL, token hex)."""
    result = client.cli(*args, "--device", device, "--password", PASSWORD)
    match = INVITATION_URL_RE.search(result.stdout)
    if not match:
        raise HarnessError(f"no invitation URL in output\n{result}")
    return match.group(1), match.group(3)


def _pick_sas(chooser: InteractiveProcess, prompt: str, code: str) -> None:
    before, _ = chooser.expect(prompt)
    choices = dict((value, index) for index, value in SAS_CHOICE_RE.findall(before))
    if code not in choices:
        raise HarnessError(f"SAS code {code!r} not among the offered choices {choices}\n{chooser.output}")
    chooser.send_line(choices[code])


def greet_and_claim(
    greeter_home: ClientHome,
    greeter_device: str,
    claimer_home: ClientHome,
    invitation_url: str,
    *,
    kind: str,
    claimer_label: str = "",
    device_label: str = "new-device",
) -> tuple[str, str]:
    """Run `greet_invitation` and `claim_invitation` concurrently, answering each prompt as
    the two humans would (reading the SAS code one shows and selecting it on the other).
    Returns both processes' final output."""
    greeter = greeter_home.spawn_cli(
        "greet_invitation", invitation_url, "--device", greeter_device, "--password", PASSWORD
    )
    claimer = claimer_home.spawn_cli("claim_invitation", invitation_url, "--password", PASSWORD)
    try:
        # 1. greeter shows its code, claimer picks it among 3 choices
        _, match = greeter.expect(r"Code to provide to claimer: (\w+)")
        _pick_sas(claimer, r"Select code provided by greeter.*?: ", match.group(1))
        # 2. claimer shows its code, greeter picks it
        _, match = claimer.expect(r"Code to provide to greeter: (\w+)")
        _pick_sas(greeter, r"Select code provided by claimer.*?: ", match.group(1))
        # 3. claimer states who it is, greeter accepts the defaults it proposes
        if kind == "user":
            claimer.expect(r"User fullname: ")
            claimer.send_line(claimer_label)
        claimer.expect(r"Device label( \[.*?\])?: ")
        claimer.send_line(device_label)
        if kind == "user":
            for prompt in (
                r"New user label \[.*?\]: ",
                r"New user email \[.*?\]: ",
                r"New user device label \[.*?\]: ",
            ):
                greeter.expect(prompt)
                greeter.send_line("")
            greeter.expect(r"New user profile.*?\[1\]: ")  # 0 ADMIN, 1 STANDARD (default), 2 OUTSIDER
            greeter.send_line("")
        else:
            greeter.expect(r"New device label \[.*?\]: ")
            greeter.send_line("")
        greeter_code = greeter.wait()
        claimer_code = claimer.wait()
        if greeter_code != 0 or claimer_code != 0:
            raise HarnessError(
                f"greet exit {greeter_code}, claim exit {claimer_code}\n--- greeter ---\n{greeter.output}\n"
                f"--- claimer ---\n{claimer.output}"
            )
        return greeter.output, claimer.output
    finally:
        greeter.close()
        claimer.close()
