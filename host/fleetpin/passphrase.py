"""Where a passphrase comes from, the same in every command that needs one (`key new`,
`bundle build`, `pin` on an encrypted key or PKCS#12): --passphrase-file FILE, else
$FLEETPIN_KEY_PASSPHRASE, else a hidden prompt on a terminal. Without a terminal there is no
prompt (a script would hang, or feed the prompt its next input line): an error names the flag
and the variable to use instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fleetpin.errors import UsageError

ENV = "FLEETPIN_KEY_PASSPHRASE"
FLAG = "--passphrase-file"
HINT = f"pass {FLAG} FILE or set ${ENV}"
OPTION_HELP = f"file holding the passphrase (else ${ENV}, else a prompt on a terminal)"


def from_file_or_env(passphrase_file: Path | None) -> str | None:
    """The passphrase given without asking: the file (without its final newline), else the variable."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{passphrase_file}: cannot read the passphrase ({FLAG}): "
                             f"{getattr(e, 'strerror', None) or e}") from None
    return os.environ.get(ENV) or None


def interactive() -> bool:
    """A person at a terminal who can be asked."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def read(passphrase_file: Path | None, *, prompt: str, confirm: bool = False) -> str:
    """The passphrase from --passphrase-file, $FLEETPIN_KEY_PASSPHRASE or a prompt on a terminal;
    UsageError (no prompt) when none is given and there is no terminal."""
    given = from_file_or_env(passphrase_file)
    if given is not None:
        return given
    if not interactive():
        raise UsageError(f"{prompt}: no passphrase given, and no terminal to ask on", hint=HINT)
    return str(click.prompt(prompt[:1].upper() + prompt[1:], hide_input=True, confirmation_prompt=confirm,
                            err=True))
