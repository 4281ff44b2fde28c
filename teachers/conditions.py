"""What a conditional teacher is conditioned on, as one table: row i is the cond of condition i.

Class-conditional teachers: the labels 0..K-1 (row i = i). Text-to-image teachers: the text embeddings of a prompt
set (row i = the embedding of prompt i), computed once per prompt set and cached on disk. Training, pairs and
evaluation draw conditions as rows of the table, so they never know which kind it is.

A cond is one tensor (labels, or SD's embeddings) or, where a family needs several per sample (SDXL: both encoders'
hidden states and the pooled embedding), one `tensordict.TensorDict` with a batch dimension: it indexes by rows,
concatenates (`torch.cat`), stacks and moves between devices as one tensor does, so callers treat both alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from teachers.errors import ConfigError

log = logging.getLogger(__name__)

PROMPT_SOURCES = ("mnist_captions", "file", "hub")


@dataclass
class Conditions:
    """The rows conds are drawn from; for prompt sets, the prompts and (when known) the class each prompt names."""

    table: torch.Tensor
    prompts: list[str] | None = None
    classes: torch.Tensor | None = None  # (P,) long: the digit a prompt names (prompt accuracy), -1 when unknown

    def __len__(self) -> int:
        return len(self.table)

    def draw(self, n: int, generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """n conds drawn uniformly from the rows (and their row indices), on `device`. For a class table this is
        torch.randint(K, (n,)): the labels and random stream of a plain class draw."""
        idx = torch.randint(len(self.table), (n,), generator=generator, device=device)
        return self.rows(idx), idx

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The conds of row indices, on idx's device. The table itself stays where it is (CPU memory): a prompt set's
        embeddings (SD v1.5: 2.4 GB for 10,000 prompts) never all sit on the GPU, only a batch's rows move."""
        return self.table[idx.to(self.table.device)].to(idx.device)

    def digest(self) -> str:
        """sha256 of the table's content (a structured table's fields by name): keys cached samples drawn from it."""
        if isinstance(self.table, torch.Tensor):
            return hashlib.sha256(self.table.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        return hash_named_tensors(hashlib.sha256(), flat_tensors(self.table)).hexdigest()


def hash_named_tensors(key, tensors: dict[str, torch.Tensor]):
    """key (a hashlib object) updated with each tensor's name and float32 bytes, in name order; key itself."""
    for name, tensor in sorted(tensors.items()):
        key.update(name.encode())
        key.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return key


def flat_tensors(table) -> dict[str, torch.Tensor]:
    """A condition table as named tensors (safetensors' format): `embeddings`, or `embeddings.<field>` per field."""
    if isinstance(table, torch.Tensor):
        return {"embeddings": table}
    return {f"embeddings.{name}": tensor for name, tensor in table.items()}


def from_flat_tensors(tensors: dict[str, torch.Tensor]):
    """The table flat_tensors wrote: one tensor, or a TensorDict of its fields."""
    if set(tensors) == {"embeddings"}:
        return tensors["embeddings"]
    from tensordict import TensorDict

    fields = {name.removeprefix("embeddings."): tensor for name, tensor in tensors.items()}
    return TensorDict(fields, batch_size=[len(next(iter(fields.values())))], device="cpu")


def class_conditions(num_classes: int | None) -> Conditions | None:
    """Labels 0..K-1 of a class-conditional teacher; None for an unconditional one."""
    return None if not num_classes else Conditions(torch.arange(num_classes), classes=torch.arange(num_classes))


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file (blank lines skipped); an empty or non-UTF-8 file is refused, naming
    the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.prompts.path={path}: no such file")
    raw = path.read_bytes()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"data.prompts.path={path}: line {number} is not UTF-8 ({err.reason} at byte {err.start})") from None
    prompts = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"data.prompts.path={path} holds no prompts (one caption a line)")
    return prompts


def load_prompts(prompts_cfg, part: str) -> tuple[list[str], list[int] | None]:
    """The prompt set of data.prompts for `part` (train: what the student learns on; test: evaluation), and the class
    each names when the source knows it.

    source mnist_captions: the miniature SD's captions (train: every phrasing of every digit, with and without the
    stroke attributes; test: every phrasing, no attribute). file: a UTF-8 text file (data.prompts.path, and
    data.prompts.eval_path for evaluation, default the same). hub: a `datasets` dataset (data.prompts.name,
    .split / .eval_split, .caption_key), e.g. COCO captions on a machine with network."""
    source = prompts_cfg.source
    if source == "mnist_captions":
        from teachers.mini_sd import all_captions, digit_of_prompt, prompt_set

        if part == "train":
            prompts = all_captions()
            return prompts, [digit_of_prompt(p) for p in prompts]
        return prompt_set()
    if source == "file":
        path = prompts_cfg.path if part == "train" else (prompts_cfg.get("eval_path") or prompts_cfg.path)
        return read_prompt_file(path), None
    if source == "hub":
        from datasets import load_dataset

        split = prompts_cfg.split if part == "train" else prompts_cfg.get("eval_split") or prompts_cfg.split
        data = load_dataset(prompts_cfg.name, split=split)
        key = prompts_cfg.caption_key
        if key not in data.column_names:
            raise ConfigError(f"data.prompts.caption_key={key}: {prompts_cfg.name} has columns {', '.join(data.column_names)}")
        captions = [c[0] if isinstance(c, list) else c for c in data[key]]
        limit = prompts_cfg.get("max_prompts")
        return (captions[:limit] if limit else captions), None
    raise ConfigError(f"data.prompts.source={source}; allowed: {', '.join(PROMPT_SOURCES)}")


def embedded(denoiser, prompts: list[str], shard=None):
    """The prompts' embeddings (a condition table). With a shard of several processes (eval.shard.Shard: span,
    gather), each process embeds a contiguous share of the prompts and the shares are joined in order."""
    if shard is None or shard.num_processes == 1:
        return denoiser.encode_condition(prompts).cpu()
    part = shard.span(len(prompts), -(-len(prompts) // shard.num_processes))
    mine = flat_tensors(denoiser.encode_condition(prompts[part]).cpu()) if part.start < part.stop else None
    parts = [p for p in shard.gather(mine) if p is not None]
    return from_flat_tensors({name: torch.cat([p[name] for p in parts]) for name in parts[0]})


def text_conditions(denoiser, prompts: list[str], classes: list[int] | None, cache_dir: str | Path | None, shard=None) -> Conditions:
    """The prompts' text embeddings as a condition table, read from cache_dir/text_embeddings when this text encoder
    has embedded this prompt set before (keyed by the encoder's weights, the tokenizer's vocabulary and the prompts).
    With a shard, the processes embed their shares (`embedded`) and the main one writes the cache."""
    from safetensors.torch import load_file, save_file

    from teachers.io import write_folder_atomic

    weights, vocabulary, max_tokens = denoiser.text_encoder_digest_parts()
    key = hash_named_tensors(hashlib.sha256(), weights)
    key.update(json.dumps([vocabulary, max_tokens, prompts]).encode())
    labels = None if classes is None else torch.tensor([-1 if c is None else c for c in classes])
    folder = None if cache_dir is None else Path(cache_dir) / "text_embeddings" / key.hexdigest()[:24]
    if folder is not None and (folder / "embeddings.safetensors").is_file():
        return Conditions(from_flat_tensors(load_file(folder / "embeddings.safetensors")), list(prompts), labels)
    table = embedded(denoiser, list(prompts), shard)  # every process looked for the cache before the main one writes it
    if folder is not None and (shard is None or shard.main):
        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            save_file({name: t.contiguous() for name, t in flat_tensors(table).items()}, tmp / "embeddings.safetensors")
            (tmp / "prompts.json").write_text(json.dumps(list(prompts)))

        write_folder_atomic(folder, write, keep_existing=True)
    return Conditions(table, list(prompts), labels)


def conditions_for(denoiser, data_cfg, part: str, cache_dir=None, shard=None) -> Conditions | None:
    """The condition table of a teacher: its prompt set's embeddings (text-to-image; with a shard, embedded by the
    processes in shares), its labels (class-conditional), or None (unconditional)."""
    if denoiser.text_conditional:
        if data_cfg.get("prompts") is None:
            raise ConfigError("a text-to-image teacher needs prompts: set data.prompts (e.g. data=mnist_sd or data=prompts)")
        prompts, classes = load_prompts(data_cfg.prompts, part)
        return text_conditions(denoiser, prompts, classes, cache_dir, shard)
    if data_cfg.get("prompts") is not None:
        raise ConfigError(f"data.prompts is set but the teacher is not text-to-image ({type(denoiser).__name__}); "
                          "use data=mnist (or another image data set) for class-conditional and unconditional teachers")
    return class_conditions(denoiser.num_classes)
