"""Embedding table of the 2^M - 1 modality combinations (bit order, see modalities.py).

* ``clip``: the prompts of the hyper-network through a frozen open_clip text encoder (ViT-B-32 with the OpenAI weights
  by default), L2-normalised. Computed once and cached under ``$XDG_CACHE_HOME/nnunet_allstage`` (or
  ``~/.cache``), keyed by model, weights and prompts. The table becomes a buffer of the network, so
  checkpoints carry it and inference never loads CLIP.
* ``binary``: the availability code itself (the paper's Fig. 5 ablation); no CLIP at all.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import prompts_in_bit_order

CLIP_EMBEDDING_DIM = 512  # ViT-B-32 / ViT-B-16 text towers; the network's text projection is built for it
RANDOM_CLIP_TAG = "random-test-only"
RANDOM_CLIP_WARNING = ("RANDOM-WEIGHT CLIP (tests and demo only): the text embeddings carry no language "
                       "knowledge; load real weights for real use")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnunet_allstage" / "text_embeddings"


def _weights_key(model: str, pretrained: str, weights_file: str) -> str:
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise AllStageError(f"CLIP weights file {weights_file} not found (option clip_weights / "
                                f"NNUNET_ALLSTAGE_CLIP_WEIGHTS)")
        stat = path.stat()
        return f"{model}|file:{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return f"{model}|{pretrained}"


def _encode_prompts(prompts: Sequence[str], model_name: str, pretrained: str, weights_file: str) -> torch.Tensor:
    import open_clip
    source = weights_file or pretrained
    try:
        if pretrained == RANDOM_CLIP_TAG and not weights_file:
            with torch.random.fork_rng():
                torch.manual_seed(0)  # the same random tower in every process
                model = open_clip.create_model(model_name, pretrained=None)
        else:
            model = open_clip.create_model(model_name, pretrained=source, require_pretrained=True)
    except Exception as e:  # open_clip raises many kinds (hub offline, bad file, unknown tag)
        raise AllStageError(
            f"could not load CLIP text weights {model_name}/{source} ({type(e).__name__}: {str(e)[:200]}). "
            f"Provide them: put the open_clip weights in the Hugging Face cache once (with internet), or set "
            f"NNUNET_ALLSTAGE_CLIP_WEIGHTS=/path/to/open_clip_model.safetensors; or train the binary-code "
            f"variants (-tr AllStage*_Binary), which need no CLIP") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        features = model.encode_text(tokenizer(list(prompts))).float()
    return torch.nn.functional.normalize(features, dim=-1)


def clip_table(modality_names: Sequence[str], model: str = "ViT-B-32", pretrained: str = "openai",
               weights_file: str = "", use_cache: bool = True) -> tuple[torch.Tensor, str]:
    """(table (2^M-1, 512), description). The description says which weights produced it."""
    prompts = prompts_in_bit_order(modality_names)
    key = _weights_key(model, pretrained, weights_file)
    digest = hashlib.sha256(json.dumps([key, prompts]).encode()).hexdigest()[:20]
    description = f"clip:{key}" + (f" [{RANDOM_CLIP_WARNING}]" if pretrained == RANDOM_CLIP_TAG and not weights_file
                                   else "")
    path = cache_dir() / f"{digest}.pt"
    if use_cache and path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["table"], description
    table = _encode_prompts(prompts, model, pretrained, weights_file)
    if table.shape[1] != CLIP_EMBEDDING_DIM:
        raise AllStageError(f"CLIP model {model} gives {table.shape[1]}-d text embeddings; the hyper-network "
                            f"expects {CLIP_EMBEDDING_DIM} (ViT-B-32 or ViT-B-16)")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"table": table, "prompts": prompts, "key": key}, tmp)
        os.replace(tmp, path)
    return table, description
