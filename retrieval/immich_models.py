"""immich's conventions: its CLIP model names and vector sizes, text and name cleaning, language codes, vector format.

Learned from immich's machine-learning service (``immich_ml/models/constants.py``,
``models/transforms.py``, ``config.py``) and its server's model table
(``CLIP_MODEL_INFO``). Pure data and string functions: importing this needs
neither FastAPI nor torch, so the CLI can check ``--model`` / ``--immich-name``
cheaply. The service itself is :mod:`retrieval.immich_ml`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import MMSearchError

__all__ = [
    "ImmichClipModel",
    "IMMICH_CLIP_MODELS",
    "clean_model_name",
    "clean_text",
    "flores_code",
    "format_embedding",
    "immich_names_for",
    "DEFAULT_FLORES",
]


@dataclass(frozen=True)
class ImmichClipModel:
    """One CLIP model name of immich's, and what mmsearch loads for it."""

    name: str
    dim: int  # the size of immich's vector column for this model
    spec: str | None  # the open_clip spec; None: a model mmsearch cannot load (reason in ``unsupported``)
    unsupported: str | None = None

    @property
    def takes_language(self) -> bool:
        """NLLB text towers are told the query's language (immich's own service does the same)."""
        return self.name.startswith("nllb-")


_MCLIP = (
    "an M-CLIP model (a multilingual Hugging Face text tower beside an OpenAI/LAION image tower); "
    "mmsearch does not load M-CLIP towers yet: choose e.g. nllb-clip-base-siglip__v1 or "
    "XLM-Roberta-Large-ViT-H-14__frozen_laion5b_s13b_b90k for multilingual search"
)


def _table() -> dict[str, ImmichClipModel]:
    # (immich name, vector size) grouped by open_clip architecture. immich writes the pretrained
    # tag with '-' where open_clip has '_' (laion2b-s34b-b79k), and capitalises XLM-Roberta.
    dims_by_arch: dict[str, tuple[int, tuple[str, ...]]] = {
        "RN50": (1024, ("openai", "yfcc15m", "cc12m")),
        "RN101": (512, ("openai", "yfcc15m")),
        "RN50x4": (640, ("openai",)),
        "RN50x16": (768, ("openai",)),
        "RN50x64": (1024, ("openai",)),
        "ViT-B-32": (512, ("openai", "laion2b-s34b-b79k", "laion2b_e16", "laion400m_e31", "laion400m_e32")),
        "ViT-B-16": (512, ("openai", "laion400m_e31", "laion400m_e32")),
        "ViT-B-16-plus-240": (640, ("laion400m_e31", "laion400m_e32")),
        "ViT-L-14": (768, ("openai", "laion2b-s32b-b82k", "laion400m_e31", "laion400m_e32")),
        "ViT-L-14-336": (768, ("openai",)),
        "ViT-L-14-quickgelu": (768, ("dfn2b",)),
        "ViT-H-14": (1024, ("laion2b-s32b-b79k",)),
        "ViT-H-14-quickgelu": (1024, ("dfn5b",)),
        "ViT-H-14-378-quickgelu": (1024, ("dfn5b",)),
        "ViT-g-14": (1024, ("laion2b-s12b-b42k",)),
        "ViT-B-16-SigLIP": (768, ("webli",)),
        "ViT-B-16-SigLIP-256": (768, ("webli",)),
        "ViT-B-16-SigLIP-384": (768, ("webli",)),
        "ViT-B-16-SigLIP-512": (768, ("webli",)),
        "ViT-B-16-SigLIP-i18n-256": (768, ("webli",)),
        "ViT-L-16-SigLIP-256": (1024, ("webli",)),
        "ViT-L-16-SigLIP-384": (1024, ("webli",)),
        "ViT-SO400M-14-SigLIP-384": (1152, ("webli",)),
        "ViT-B-16-SigLIP2": (768, ("webli",)),
        "ViT-B-32-SigLIP2-256": (768, ("webli",)),
        "ViT-L-16-SigLIP2-256": (1024, ("webli",)),
        "ViT-L-16-SigLIP2-384": (1024, ("webli",)),
        "ViT-L-16-SigLIP2-512": (1024, ("webli",)),
        "ViT-SO400M-14-SigLIP2": (1152, ("webli",)),
        "ViT-SO400M-14-SigLIP2-378": (1152, ("webli",)),
        "ViT-SO400M-16-SigLIP2-256": (1152, ("webli",)),
        "ViT-SO400M-16-SigLIP2-384": (1152, ("webli",)),
        "ViT-SO400M-16-SigLIP2-512": (1152, ("webli",)),
        "ViT-gopt-16-SigLIP2-256": (1536, ("webli",)),
        "ViT-gopt-16-SigLIP2-384": (1536, ("webli",)),
        "nllb-clip-base-siglip": (768, ("v1", "mrl")),
        "nllb-clip-large-siglip": (1152, ("v1", "mrl")),
        "xlm-roberta-base-ViT-B-32": (512, ("laion5b_s13b_b90k",)),
        "xlm-roberta-large-ViT-H-14": (1024, ("frozen_laion5b_s13b_b90k",)),
    }
    table: dict[str, ImmichClipModel] = {}
    for arch, (dim, tags) in dims_by_arch.items():
        shown = arch.replace("xlm-roberta-base", "XLM-Roberta-Base").replace("xlm-roberta-large", "XLM-Roberta-Large")
        for tag in tags:
            name = f"{shown}__{tag}"
            table[name] = ImmichClipModel(name, dim, f"{arch}:{tag.replace('-', '_')}")
    for name, dim in (("XLM-Roberta-Large-Vit-B-32", 512), ("XLM-Roberta-Large-Vit-B-16Plus", 640),
                      ("XLM-Roberta-Large-Vit-L-14", 768), ("LABSE-Vit-L-14", 768)):
        table[name] = ImmichClipModel(name, dim, None, f"{name} is {_MCLIP}")
    return table


IMMICH_CLIP_MODELS: Mapping[str, ImmichClipModel] = _table()
"""Every CLIP model name immich's server offers, with the vector size its database expects."""

_NAME_TRANSLATION = str.maketrans({":": "_", "\\": "_", "/": "_", ".": None})


def clean_model_name(name: str) -> str:
    """A model name as immich's service normalises it: the last path part, ``:``/``\\`` -> ``_``, dots dropped."""
    return name.split("/")[-1].translate(_NAME_TRANSLATION)


def immich_names_for(spec: str) -> list[str]:
    """The immich model names that mean this open_clip spec (e.g. ``ViT-B-32:openai`` -> ``["ViT-B-32__openai"]``)."""
    wanted = spec.strip()
    return [m.name for m in IMMICH_CLIP_MODELS.values() if m.spec is not None and m.spec.lower() == wanted.lower()]


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, *, canonicalize: bool = False) -> str:
    """A query text as immich's service cleans it before tokenizing.

    Runs of whitespace become one space (ends trimmed); with ``canonicalize``
    (SigLIP-style tokenizers) ASCII punctuation is removed and letters lowered.
    """
    text = " ".join(text.split())
    if canonicalize:
        text = text.translate(_PUNCTUATION).lower()
    return text


# immich passes its UI language (a Weblate locale such as "de", "pt-BR", "zh-TW"); NLLB
# towers want a FLORES-200 code. Written from the FLORES-200 list (every code here is one
# of NLLB's language tokens); a region-specific entry wins over its language.
_FLORES: Mapping[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "ast": "ast_Latn", "az": "azj_Latn",
    "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "bo": "bod_Tibt", "bs": "bos_Latn", "ca": "cat_Latn",
    "ckb": "ckb_Arab", "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn", "el": "ell_Grek",
    "en": "eng_Latn", "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab",
    "fi": "fin_Latn", "fil": "tgl_Latn", "fo": "fao_Latn", "fr": "fra_Latn", "ga": "gle_Latn", "gd": "gla_Latn",
    "gl": "glg_Latn", "gu": "guj_Gujr", "ha": "hau_Latn", "he": "heb_Hebr", "hi": "hin_Deva", "hr": "hrv_Latn",
    "ht": "hat_Latn", "hu": "hun_Latn", "hy": "hye_Armn", "id": "ind_Latn", "ig": "ibo_Latn", "is": "isl_Latn",
    "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn", "ka": "kat_Geor", "kk": "kaz_Cyrl", "km": "khm_Khmr",
    "kmr": "kmr_Latn", "kn": "kan_Knda", "ko": "kor_Hang", "ku": "kmr_Latn", "ky": "kir_Cyrl", "lb": "ltz_Latn",
    "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn", "mfa": "zsm_Latn", "mi": "mri_Latn", "mk": "mkd_Cyrl",
    "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva", "ms": "zsm_Latn", "mt": "mlt_Latn", "my": "mya_Mymr",
    "nb": "nob_Latn", "ne": "npi_Deva", "nl": "nld_Latn", "nn": "nno_Latn", "no": "nob_Latn", "oc": "oci_Latn",
    "pa": "pan_Guru", "pl": "pol_Latn", "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
    "si": "sin_Sinh", "sk": "slk_Latn", "sl": "slv_Latn", "so": "som_Latn", "sq": "als_Latn", "sr": "srp_Cyrl",
    "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "tg": "tgk_Cyrl", "th": "tha_Thai",
    "tk": "tuk_Latn", "tl": "tgl_Latn", "tr": "tur_Latn", "tt": "tat_Cyrl", "ug": "uig_Arab", "uk": "ukr_Cyrl",
    "ur": "urd_Arab", "uz": "uzn_Latn", "vi": "vie_Latn", "yi": "ydd_Hebr", "yo": "yor_Latn", "yue": "yue_Hant",
    "zh": "zho_Hans", "zh-cn": "zho_Hans", "zh-hans": "zho_Hans", "zh-sg": "zho_Hans", "zh-tw": "zho_Hant",
    "zh-hant": "zho_Hant", "zh-hk": "zho_Hant", "zh-mo": "zho_Hant", "zu": "zul_Latn",
}
DEFAULT_FLORES = "eng_Latn"  # what an NLLB tokenizer assumes when told nothing; immich falls back to it too


def flores_code(language: str | None) -> str:
    """The FLORES-200 code for a UI locale (``de`` -> ``deu_Latn``, ``pt-BR`` -> ``por_Latn``); English if unknown."""
    if not language:
        return DEFAULT_FLORES
    key = language.strip().replace("_", "-").lower()
    return _FLORES.get(key) or _FLORES.get(key.split("-")[0]) or DEFAULT_FLORES


def format_embedding(vector: np.ndarray) -> str:
    """The vector as immich's service sends it: a JSON array in a string, each float32 in its shortest exact form."""
    values = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.isfinite(values).all():
        raise MMSearchError("the model produced a non-finite embedding")
    # str() of a numpy float32 is the shortest text that reads back as the same float32.
    return "[" + ",".join(str(v) for v in values) + "]"
