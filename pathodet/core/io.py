"""Small file helpers shared by every writer: atomic writes and hard links.

Every output pathodet writes goes through :func:`atomic_write` (streamed, as checkpoints
are) or :func:`atomic_write_bytes` and its text and image wrappers, so that a killed run
never leaves a half-written file behind: the content goes to a temporary file in the same
folder, is flushed to disk, and is renamed over the target in one step.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

# mkstemp creates files readable by their owner only (0600); written files should get the
# usual mode, 0666 less the umask, like any file opened for writing.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file ``f`` in the same
    folder, which is flushed to disk and renamed over ``path``.

    Streaming into the file (``torch.save(state, f)``, say) keeps no second copy of a large
    content in memory. Whatever ``write`` raises propagates, and the temporary file is
    removed: ``path`` is either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def remove_stale_temps(folder: Path, patterns: Iterable[str]) -> int:
    """Delete the temporary files a writer killed mid-write left (``.NAME.*.tmp``, from
    :func:`atomic_write`): every match of the glob ``patterns`` under ``folder``.
    Returns how many were removed."""
    removed = 0
    for pattern in patterns:
        for tmp in Path(folder).glob(pattern):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_image(path: str | os.PathLike[str], rgb: np.ndarray, *, quality: int = 90) -> Path:
    """Encode an ``(H, W, 3)`` uint8 RGB array as JPEG or PNG (by suffix) and write it atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if suffix in (".jpg", ".jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    elif suffix == ".png":
        image.save(buf, format="PNG")
    else:
        raise ValueError(f"{path}: unsupported image suffix {suffix!r} (use .jpeg, .jpg or .png)")
    return atomic_write_bytes(path, buf.getvalue())


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Hard-link ``src`` to ``dst`` (replacing ``dst``), copying when linking is impossible.

    Returns ``"link"`` or ``"copy"`` so callers can report what happened.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "link"
    except OSError:  # other filesystem, or links not supported
        shutil.copy2(src, tmp)
        how = "copy"
    os.replace(tmp, dst)
    return how
