"""Cache entries keyed by what defines them: a folder is reused only when its key.json equals the key asked for."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from teachers.errors import ConfigError

KEY_FILE = "key.json"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Hex sha256 of the tensors' bytes, shapes and dtypes (images and labels): the content a cache entry was made from."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def key_digest(key: dict) -> str:
    """Hex sha256 of a key (JSON, sorted): a cache folder's name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def write_key(folder: Path, key: dict) -> None:
    (Path(folder) / KEY_FILE).write_text(json.dumps(key, sort_keys=True) + "\n")


def check_key(folder: Path, key: dict | None) -> None:
    """A cache folder made for `key`, or a ConfigError naming the folder and the first differing field."""
    if key is None:
        return
    file = Path(folder) / KEY_FILE
    stored = json.loads(file.read_text()) if file.is_file() else {}
    differing = [k for k in sorted(key) if stored.get(k) != key[k]]
    if differing:
        raise ConfigError(f"cache entry {folder} was made for {differing[0]}={stored.get(differing[0])!r}, not "
                          f"{key[differing[0]]!r}; delete it or use another eval.cache_dir")
