"""The error contract of the command-line tools (docs/faults.md).

Every fault a user can cause is an exception of a class below (or
``structures.DataError``) and leaves a CLI as ONE line on stderr naming the
file or flag and the fault, with exit status 2; non-finite training is 3. A
traceback means a bug of ours. ``run_cli`` applies the contract around a
CLI's main function and ``parse_flags`` around absl's flag parsing (a bad
``--config`` file, variant or key).

  exception                 exit  message
  DataError                  2    error: bad input: FILE[sample]: fault
  ConfigError                2    error: --flag or config key: fault
  ResumeError                2    error: checkpoint in DIR ...: fault
  CheckpointError            2    error: DIR/checkpoints/N: fault
  MissingExtraError          2    error: what needs it: pip install -e ".[x]"
  OSError, disk full         2    error: disk full writing FILE ...
  NonFiniteError             3    error: non-finite loss or gradients ...
  KeyboardInterrupt        130    error: interrupted (Ctrl-C) ... (in the
                                  training loop Ctrl-C checkpoints first)
"""
from __future__ import annotations

import errno
import re
import sys
from typing import Callable, Optional, Sequence, Tuple

from noisy_nodes.data.structures import DataError

__all__ = ["DataError", "ConfigError", "ResumeError", "CheckpointError",
           "MissingExtraError", "NonFiniteError", "describe", "run_cli",
           "parse_flags"]


class ConfigError(ValueError):
  """A config value or command-line flag that cannot work."""

  def __init__(self, flag: str, fault: str):
    self.flag, self.fault = str(flag), str(fault)
    super().__init__(f"{self.flag}: {self.fault}")


class ResumeError(RuntimeError):
  """The workdir's checkpoint cannot be resumed by this run (another model,
  another device count)."""


class CheckpointError(RuntimeError):
  """No usable checkpoint: missing, corrupt (checksum, unreadable file) or
  holding non-finite parameters."""


class MissingExtraError(ImportError):
  """An optional dependency is needed: the message says which extra."""


class NonFiniteError(RuntimeError):
  """Non-finite loss or gradients (exit 3)."""


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _disk_full(exc: BaseException) -> Optional[OSError]:
  """The ENOSPC/EDQUOT OSError in ``exc``'s cause/context chain, if any.

  orbax and tensorstore wrap the OS error several levels deep.
  """
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
      return exc
    if "No space left on device" in str(exc) or "Disk quota exceeded" in str(
        exc):
      return exc if isinstance(exc, OSError) else OSError(
          errno.ENOSPC, str(exc).splitlines()[0][:300])
    exc = exc.__cause__ or exc.__context__
  return None


def _line(text: str) -> str:
  return " ".join(str(text).split())


def describe(exc: BaseException) -> Optional[Tuple[int, str]]:
  """(exit status, one-line message) for a user fault; None for a bug."""
  if isinstance(exc, DataError):
    return 2, f"error: bad input: {_line(exc)}"
  if isinstance(exc, (ConfigError, ResumeError, CheckpointError,
                      MissingExtraError)):
    return 2, f"error: {_line(exc)}"
  if isinstance(exc, NonFiniteError):
    return 3, f"error: {_line(exc)}"
  full = _disk_full(exc)
  if full is not None:
    where = getattr(full, "filename", None)
    return 2, ("error: disk full" + (f" writing {where}" if where else "")
               + f" ({_line(full.strerror or full)}); complete checkpoints "
               "are kept: free space and rerun to resume")
  if isinstance(exc, FileNotFoundError):
    return 2, f"error: {_line(exc)}"
  try:
    from absl import app  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return None
  if isinstance(exc, app.UsageError):
    return 2, f"error: {_line(exc)}"
  return None


def run_cli(main: Callable[[], Optional[int]]) -> Optional[int]:
  """Runs ``main()``; a user fault -> its one line on stderr and sys.exit."""
  try:
    return main()
  except KeyboardInterrupt:
    # Ctrl-C outside the training loop (reading data, compiling), or a
    # second one: nothing half-written is left (orbax writes atomically).
    print("error: interrupted (Ctrl-C); complete checkpoints are kept",
          file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    known = describe(e)
    if known is None:
      raise
    print(known[1], file=sys.stderr)
    sys.exit(known[0])


def _flag_fault(exc: BaseException, argv: Sequence[str]) -> str:
  """One line for an error absl/ml_collections raised parsing ``argv``."""
  text = str(exc)
  if "Traceback (most recent call last)" in text:
    # config_flags embeds the config file's traceback: keep the flag and the
    # exception's last line ("ValueError: unknown ... variant ...").
    lines = [l for l in text.splitlines() if l.strip()]
    head = lines[0].split(": Error whilst")[0].replace("flag ", "", 1)
    return f"{head}: {lines[-1].strip()}"
  if isinstance(exc, (KeyError, AttributeError)):
    # An unknown key in --config.a.b=...: ml_collections' KeyError text
    # ('b' / Did you mean "c" instead of "b"?) wrapped in an AttributeError.
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    key = hint.group(2) if hint else (re.findall(r"'([\w.]+)'", text) or
                                      ["?"])[0]
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and a.split("=")[0].split(".")[-1] == key),
                f"config key {key!r}")
    return (f"{flag}: unknown config key"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  return _line(text)


def loaded_config(holder):
  """``holder.value`` of a config flag, or ``ConfigError`` if its file did
  not load (ml_collections defers that error to the first access)."""
  try:
    config = holder.value
    if config is not None:
      config.keys()
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise ConfigError(f"--{holder.name}", f"cannot load the config file "
                      f"({lines[-1] if lines else e})") from None
  return config


def parse_flags(argv: Sequence[str]):
  """absl ``flags_parser``: a bad flag -> one line and exit 2 (not usage)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(list(argv))
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {_flag_fault(e, argv)}", file=sys.stderr)
    sys.exit(2)
