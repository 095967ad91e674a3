"""Messages and progress bars for people: status lines on stderr, figures on stdout."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from tqdm.auto import tqdm


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 epoch', '30 epochs', '4,750 images'; `nouns` where adding an s is wrong ('classes')."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_process() -> bool:
    """True but in the second and later processes of a torchrun launch (read from its RANK, so
    without PyTorch): what all processes would say alike is said once."""
    return os.environ.get("RANK", "0") == "0"


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process among others (its WORLD_SIZE, read without PyTorch,
    and true still once the process group is left)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def said_as(command_line: str, python: str) -> str:
    """What a message names for the reader to type: the command line's words when a command runs,
    Python's when selfsup is called from Python (where a flag means nothing)."""
    from . import provenance

    return command_line if provenance.COMMAND is not None else python


_NO_VALUE = object()


def flag(name: str) -> str:
    """The command-line flag of the option `name`: image_size is --image-size."""
    return "--" + name.replace("_", "-")


def option(name: str, value: object = _NO_VALUE, python: str | tuple[str, ...] | None = None) -> str:
    """An option as the reader gives it: `--image-size 32` in a command, `image_size=32` from Python
    (`python`: the keyword there, where it differs from the flag's name, or the keys that lead to it
    in a dict argument: ('config', 'lr') reads `config={'lr': 0.1}`). Without a value the flag or
    keyword alone (`--image-size`, `image_size=`, `config['lr']`); a switch's True or False as the
    flag alone or its --no- form (`--resume`, `--no-small-stem`)."""
    as_flag = flag(name)
    keys = (python,) if isinstance(python, str) else python or (name,)
    if value is _NO_VALUE:
        return said_as(as_flag, f"{keys[0]}=" if len(keys) == 1 else keys[0] + "".join(f"[{k!r}]" for k in keys[1:]))
    if isinstance(value, os.PathLike):  # 'x.csv', not PosixPath('x.csv')
        value = str(value)
    if isinstance(value, bool):
        command_line = as_flag if value else "--no-" + as_flag[2:]
    else:
        command_line = f"{as_flag} {','.join(map(str, value)) if isinstance(value, (tuple, list)) else value}"
    return said_as(command_line, f"{keys[0]}={_nested(keys[1:], value)}")


def _nested(keys: tuple[str, ...], value: object) -> str:
    """`value` inside dicts of `keys`, as Python writes it: {'config': {'lr': 0.1}}."""
    shown = repr(value)
    for key in reversed(keys):
        shown = f"{{{key!r}: {shown}}}"
    return shown


def named_option(name: str) -> str:
    """An option named as a thing in a sentence (choose another --out): the flag in a command, the
    keyword in backquotes from Python (choose another `out`), where `out=` would read as a value
    left out."""
    return said_as(flag(name), f"`{name}`")


# Where a Python caller gives an evaluation protocol's options: () as keywords of evaluate_*, or the
# dict argument that holds them (label_efficiency_curve's protocol_options), set while the curve runs.
_protocol_options_in: tuple[str, ...] = ()


@contextmanager
def protocol_options_in(keyword: str):
    """In the block, `protocol_option` names a protocol's option, from Python, as a key of the dict
    argument `keyword` (protocol_options={'val_fraction': 0}); a command's flags are unchanged."""
    global _protocol_options_in
    outer, _protocol_options_in = _protocol_options_in, (keyword,)
    try:
        yield
    finally:
        _protocol_options_in = outer


def protocol_option(name: str, value: object = _NO_VALUE, within: tuple[str, ...] = ()) -> str:
    """`option` of an evaluation protocol's option: from Python, a keyword of evaluate_* (`val_fraction=0`)
    or a key of the curve's protocol_options (`protocol_options={'val_fraction': 0}`); `within`: the
    dicts it is a key of there (fine-tuning's config: `config={'freeze_stages': 2}`)."""
    return option(name, value, python=(*_protocol_options_in, *within, name))


def path_option(name: str, path) -> str:
    """An option with a path, quoted as in a message: `--out 'runs/a'` in a command, `out='runs/a'`
    from Python."""
    return said_as(f"{flag(name)} {str(path)!r}", f"{name}={str(path)!r}")


def one_of(name: str, values, python: str | None = None) -> str:
    """An option with the values to choose from: `--backbone vit-tiny|vit-small` in a command,
    `backbone='vit-tiny' or 'vit-small'` from Python."""
    values = [str(v) for v in values]
    shown = ", ".join(map(repr, values[:-1])) + " or " + repr(values[-1]) if len(values) > 1 else repr(values[0])
    return said_as(f"{flag(name)} {'|'.join(values)}", f"{python or name}={shown}")


def setting(key: str, value: str | bool) -> str:
    """A config value as the reader sets it: `--set optim.lr=0.3` in a command, the `config` dict's
    nesting from Python (`config={'optim': {'lr': 0.3}}`); `value` is shown as given ('N'), a bool
    as each writes it (`=false`, `False`)."""
    parts = key.split(".")
    written = str(value).lower() if isinstance(value, bool) else value
    nested = "".join(f"{{'{part}': " for part in parts) + str(value) + "}" * len(parts)
    return said_as(f"--set {key}={written}", f"config={nested}")


_held: list[tuple[str, bool]] | None = None  # warnings said inside warnings_after_checks(), not yet shown
_said_once: set[str] | None = None  # the once= warnings shown inside one_command()


def warn(message: str, once: bool = False) -> None:
    """`once`: a fact about data (files skipped, a test folder that is the training folder) that each
    encoder or run reading it would repeat word for word: shown once in one_command(). Other
    warnings are shown each time, since the same words may concern another encoder."""
    if _held is not None:
        _held.append((message, once))
    # Under torchrun every process reads the same data and config: one warning, from the first.
    elif first_process() and not (once and _said_once is not None and message in _said_once):
        if once and _said_once is not None:
            _said_once.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def one_command():
    """The block is one command (the command line's, or a call of a function that reads several
    datasets or one several times: a report of several runs, a curve of several encoders, an
    evaluation whose test folder is its training folder): a warning said with once=True is shown
    the first time only. Nested, the outer command's."""
    global _said_once
    outer = _said_once
    _said_once = set() if outer is None else outer
    try:
        yield
    finally:
        _said_once = outer


@contextmanager
def warnings_after_checks():
    """Warnings said in the block are shown when it ends without an error, in the order said; when
    a check in it refuses, they are dropped. So a command whose input is refused shows the error
    alone (not a preset's warm-up adjusted, then `--data` missing), and a valid one every warning."""
    global _held
    outer, _held = _held, []
    try:
        yield
        held = _held
    finally:
        _held = outer
    for message, once in held:
        warn(message, once)


def progress_bar(total: int | None, desc: str, unit: str = "img", enabled: bool = True, initial: int = 0):
    """A bar with throughput and ETA; writes to stderr, so `--json` output on stdout stays clean."""
    # Scaled (1.28M/1.28M) only where counts are large: tqdm writes small scaled ones as 61.0/61.0.
    scaled = total is None or total >= 10_000
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scaled, dynamic_ncols=True,
                initial=initial, disable=not enabled, file=sys.stderr, mininterval=0.5, smoothing=0.1)
