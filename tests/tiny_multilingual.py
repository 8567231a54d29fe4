"""Tiny multilingual models built offline, in the layouts of the published ones (no network, ~2 s).

The published multilingual open_clip models name a Hugging Face text tower and
tokenizer by hub id (``"hf_model_name": "xlm-roberta-base"``). Here each hub
repository is imitated by a local folder written in code: a ``transformers``
config and random weights (seeded), and a tokenizer trained on a small
bilingual corpus, in the same on-disk form as the real repository:

* ``xlm-roberta``: a SentencePiece *unigram* model with NFKC normalisation
  (``sentencepiece.bpe.model``, as ``xlm-roberta-base`` ships it), loaded by
  ``XLMRobertaTokenizer``; an XLM-R tower, mean pooling, MLP projection.
* ``nllb``: a SentencePiece *BPE* model loaded by ``NllbTokenizer`` with the 202
  NLLB language codes as special tokens; an M2M100 encoder tower, CLS pooling,
  linear projection (``nllb-clip-base-siglip``'s text side).
* ``siglip-i18n``: a SentencePiece unigram model loaded by ``T5Tokenizer`` (the
  mc4 vocabulary's layout: eos 1, unk 2; padded with eos as big_vision does) with open_clip's own
  bidirectional text transformer pooled at the last position and "canonicalize"
  cleaning (``ViT-B-16-SigLIP-i18n-256``'s text side).
* ``hf-tokenizers``: an XLM-R tower whose tokenizer was trained with the
  ``tokenizers`` library itself (Unigram, NFKC, Metaspace) and is loaded
  verbatim from ``tokenizer.json`` (``PreTrainedTokenizerFast``).

:func:`build_tiny_multilingual` writes them all and registers one open_clip
architecture per family (``mmsearch-tiny-ml-<family>``) whose config points at
the local "hub" folders, so ``load_encoder("mmsearch-tiny-ml-xlm-roberta")``
builds a model exactly as open_clip builds ``xlm-roberta-base-ViT-B-32``.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Captions and queries in the scripts a user types: Chinese (simplified and
# traditional), English, Japanese, Korean, Arabic, Russian, emoji, full-width.
CORPUS: tuple[str, ...] = (
    "red shoes", "a red shoe on the left", "a pair of red shoes", "a striped blue shirt",
    "a small yellow umbrella on the left",
    "a large green bag in the middle", "a dotted purple cup", "a black hat on the right", "a photo of a pink mug",
    "a dog on the beach", "a cat sleeping on a sofa", "sunset over the sea", "plain orange t-shirt",
    "红色的鞋子", "红鞋", "一双红色的鞋", "条纹蓝衬衫", "左边的小黄伞", "中间的大绿包", "右边的黑帽子",
    "带圆点的紫色杯子", "一张粉色马克杯的照片", "海边的狗", "一只在沙发上睡觉的猫", "海上的日落", "纯色橙色T恤",
    "紅色的鞋子", "紅鞋", "條紋藍襯衫", "左邊的小黃傘", "海邊的狗", "一隻在沙發上睡覺的貓",
    "赤い靴", "青いストライプのシャツ", "左側の小さな黄色い傘", "ビーチの犬", "ソファで寝ている猫",
    "빨간 신발", "해변의 개", "소파에서 자는 고양이",
    "حذاء أحمر", "كلب على الشاطئ", "قطة نائمة على الأريكة",
    "красные туфли", "собака на пляже", "кошка спит на диване",
    "🐶 on the beach 🏖️", "🐱💤 on a sofa", "👟❤️ red sneakers", "☂️💛 yellow umbrella",
    "ＲＥＤ　ｓｈｏｅｓ　１２３", "ＴＳＨＩＲＴ ｔ恤", "iPhone 手机壳 red", "北京 Beijing 2024年",
)

FAMILIES: tuple[str, ...] = ("xlm-roberta", "nllb", "siglip-i18n", "hf-tokenizers")
WIDTH = 32           # hidden size of every tiny text tower
EMBED_DIM = 32       # the shared embedding dimension
VISION_CFG: dict[str, Any] = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
SEED = 0


@dataclass(frozen=True)
class TinyModels:
    """Where :func:`build_tiny_multilingual` put things: hub-like folders and registered arch names."""

    root: Path
    hub: dict[str, Path]      # family -> local folder standing in for the Hugging Face hub repo
    archs: dict[str, str]     # family -> open_clip architecture name (registered)


def _train_sentencepiece(path: Path, model_type: str, special_ids: dict[str, int], vocab_size: int = 260) -> None:
    """A SentencePiece model trained on :data:`CORPUS` with NFKC normalisation, as the real vocabularies are."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        minloglevel=2, num_threads=1, **{f"{name}_id": i for name, i in special_ids.items()},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _xlmr_tokenizer(folder: Path) -> Any:
    from transformers import XLMRobertaTokenizer

    scratch = folder / ".spm"
    _train_sentencepiece(scratch / "sentencepiece.bpe.model", "unigram", {"bos": 0, "pad": 1, "eos": 2, "unk": 3})
    tok = XLMRobertaTokenizer.from_pretrained(str(scratch))
    shutil.rmtree(scratch)
    return tok


def _nllb_tokenizer(folder: Path) -> Any:
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    scratch = folder / ".spm"
    _train_sentencepiece(scratch / "sentencepiece.bpe.model", "bpe", {"bos": 0, "pad": 1, "eos": 2, "unk": 3})
    tok = NllbTokenizer.from_pretrained(str(scratch))
    shutil.rmtree(scratch)
    # The real tokenizer.json carries the language codes as special tokens after the vocabulary.
    tok.add_tokens(list(FAIRSEQ_LANGUAGE_CODES), special_tokens=True)
    tok.src_lang = "eng_Latn"
    return tok


def _t5_tokenizer(folder: Path) -> Any:
    from transformers import T5Tokenizer

    scratch = folder / ".spm"
    _train_sentencepiece(scratch / "spiece.model", "unigram", {"pad": 0, "eos": 1, "unk": 2, "bos": -1})
    tok = T5Tokenizer.from_pretrained(str(scratch), extra_ids=0)
    shutil.rmtree(scratch)
    # big_vision pads SigLIP texts with the end token (open_clip's SigLipTokenizer sets pad id 1 for that
    # reason): the tower pools the last position with no mask, so the padding id is part of the model.
    tok.pad_token = "</s>"
    return tok


def _tokenizers_trained(folder: Path) -> Any:
    """A Unigram tokenizer trained by the ``tokenizers`` library itself, wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )


def _hub_folder(folder: Path, family: str) -> int:
    """Write one hub-like folder (config, seeded weights, tokenizer); returns the tokenizer's vocabulary size."""
    import torch
    from transformers import M2M100Config, M2M100Model, XLMRobertaConfig, XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    make = {"xlm-roberta": _xlmr_tokenizer, "nllb": _nllb_tokenizer, "siglip-i18n": _t5_tokenizer,
            "hf-tokenizers": _tokenizers_trained}[family]
    tokenizer = make(folder)
    tokenizer.save_pretrained(str(folder))
    vocab = len(tokenizer)
    if family == "siglip-i18n":
        return vocab  # the text tower is open_clip's own; the "hub repo" holds the tokenizer only
    torch.manual_seed(SEED)
    if family == "nllb":
        config = M2M100Config(
            vocab_size=vocab, d_model=WIDTH, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=96,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            scale_embedding=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        )
        model = M2M100Model(config)
    else:
        config = XLMRobertaConfig(
            vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=96, pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2,
            type_vocab_size=1,
        )
        model = XLMRobertaModel(config, add_pooling_layer=False)
    with _quiet_transformers():
        model.save_pretrained(str(folder))
    return vocab


def _open_clip_config(family: str, hub: Path, vocab: int) -> dict[str, Any]:
    """The open_clip model config of the family's tiny stand-in, mirroring the published config's keys."""
    if family in ("xlm-roberta", "hf-tokenizers"):  # xlm-roberta-base-ViT-B-32.json
        text = {"hf_model_name": str(hub), "hf_tokenizer_name": str(hub), "hf_pooler_type": "mean_pooler"}
        return {"embed_dim": EMBED_DIM, "vision_cfg": dict(VISION_CFG), "text_cfg": text}
    if family == "nllb":  # nllb-clip-base-siglip.json, with open_clip's ViT in place of timm's
        text = {"hf_model_name": str(hub), "hf_tokenizer_name": str(hub), "hf_proj_type": "linear",
                "hf_pooler_type": "cls_pooler"}
        return {"embed_dim": EMBED_DIM, "custom_text": True, "init_logit_bias": -10,
                "vision_cfg": dict(VISION_CFG), "text_cfg": text}
    # ViT-B-16-SigLIP-i18n-256.json
    text = {"context_length": 24, "vocab_size": vocab, "hf_tokenizer_name": str(hub),
            "tokenizer_kwargs": {"clean": "canonicalize"}, "width": WIDTH, "heads": 2, "layers": 2,
            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}
    return {"embed_dim": EMBED_DIM, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": dict(VISION_CFG), "text_cfg": text}


class _quiet_transformers:
    """Silence transformers' progress bars and load reports while building (they go to stderr)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)
        hf_logging.enable_progress_bar()


def build_tiny_multilingual(
    root: str | Path, families: tuple[str, ...] = FAMILIES, prefix: str = "mmsearch-tiny-ml"
) -> TinyModels:
    """Write the tiny hub folders and model configs under ``root`` and register them with open_clip.

    Architectures are named ``{prefix}-{family}`` (a test that deletes its hub
    folders uses its own prefix). Deterministic (seeded weights, single-threaded
    tokenizer training) and offline.
    """
    import open_clip

    root = Path(root)
    configs = root / "model_configs"
    configs.mkdir(parents=True, exist_ok=True)
    hub: dict[str, Path] = {}
    archs: dict[str, str] = {}
    for family in families:
        folder = root / "hub" / family
        vocab = _hub_folder(folder, family)
        arch = f"{prefix}-{family}"
        (configs / f"{arch}.json").write_text(json.dumps(_open_clip_config(family, folder, vocab), indent=1))
        hub[family], archs[family] = folder, arch
    open_clip.add_model_config(configs)
    return TinyModels(root=root, hub=hub, archs=archs)


def load_tiny(arch: str) -> Any:
    """``load_encoder(arch)`` with transformers' load reports silenced (the encoder is seeded and offline)."""
    from retrieval.encoder import load_encoder

    with _quiet_transformers():
        return load_encoder(arch)


@pytest.fixture(scope="session")
def tiny_ml(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny multilingual models, built once per test session (import this fixture into a test module)."""
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    return build_tiny_multilingual(tmp_path_factory.mktemp("tiny-multilingual"))


@pytest.fixture(scope="session")
def tiny_exports(tiny_ml: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Each family's encoder and the index root its torch-free export was written under (once per session)."""
    pytest.importorskip("onnxruntime")
    from retrieval.hf_text_export import ensure_hf_export

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for family, arch in tiny_ml.archs.items():
        encoder = load_tiny(arch)
        if not ensure_hf_export(encoder, root):
            raise AssertionError(f"the tiny {family} model was not exported")
        out[family] = (encoder, root)
    return out
