"""Which published models understand which languages, and which language a query is in.

Torch-free and import-cheap: ``mmsearch models --multilingual`` and every query
may use it.

* :data:`CATALOGUE` lists open_clip's multilingual models (specs as open_clip
  names them) with their size and the published text-to-image retrieval figures
  of :mod:`retrieval.multilingual_figures` (open_clip's own benchmark table).
* NLLB text towers put a language code in front of every text (``zho_Hans``,
  ``jpn_Jpan`` ...) and embed the same words differently under another code, so a
  query must carry the right one: :func:`query_language` takes ``--lang``
  (:func:`resolve_lang`: ``zh``, ``zh-TW``, ``fr``, ``fra_Latn`` ...) or detects
  the script (:func:`detect_language`). A script names the language for most of
  the world's scripts; Latin, Cyrillic and Arabic script are shared by many
  languages, so detection gives its most likely reading and says so, and a
  Latin-script query without ``--lang`` is read as English, as NLLB's tokenizer does.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidQueryError
from .multilingual_figures import FIGURES
from .multilingual_figures import SOURCE as FIGURES_SOURCE

Family = Literal["xlm-roberta", "nllb", "siglip-i18n", "clip"]
DEFAULT_NLLB_LANGUAGE = "eng_Latn"  # what NLLB's tokenizer writes when it is told nothing
PARAMS_SOURCE = ("https://github.com/mlfoundations/open_clip/blob/29b90b8dde9125c479c0ddbab477310f665a0435/"
                 "docs/model_profile.csv")


@dataclass(frozen=True)
class MultilingualModel:
    """One published multilingual model.

    ``params_m`` (millions of parameters) and ``image_gflops`` (the image tower's cost per picture, which
    sets indexing speed) come from open_clip's ``docs/model_profile.csv`` (:data:`PARAMS_SOURCE`).
    """

    arch: str
    pretrained: str
    family: Family
    dim: int
    image_size: int
    params_m: float | None
    image_params_m: float | None
    text_params_m: float | None
    image_gflops: float | None
    text_tower: str
    tokenizer: str
    languages: str

    @property
    def spec(self) -> str:
        return f"{self.arch}:{self.pretrained}"

    @property
    def needs_language(self) -> bool:
        """True when every query needs a language code (NLLB)."""
        return self.family == "nllb"

    @property
    def weights_mb_fp32(self) -> float | None:
        """Size of fp32 weights, 4 bytes per parameter: an estimate of the download, not a published figure."""
        return None if self.params_m is None else round(self.params_m * 4, 0)

    def figure(self, metric: str = "xm3600_r1", lang: str = "avg") -> float | None:
        """A published figure: ``metric`` in ``xm3600_r1``, ``xm3600_r10``, ``mscoco_r1``, ``mscoco_r10``, ``avg``.

        ``lang`` is a code as :func:`resolve_lang` takes it, or "avg"; None when the table has no such figure.
        """
        figures = FIGURES.get((self.arch, self.pretrained))
        if figures is None:
            return None
        if metric == "avg":
            return float(figures["avg"])  # type: ignore[arg-type]
        table = figures.get(metric)
        if not isinstance(table, dict):
            raise ValueError(f"unknown metric {metric!r}: use xm3600_r1, xm3600_r10, mscoco_r1, mscoco_r10 or avg")
        key = lang if lang == "avg" else _figure_key(resolve_lang(lang), mscoco=metric.startswith("mscoco"))
        value = table.get(key)
        return None if value is None else float(value)

    def evaluated_languages(self) -> list[str]:
        """Languages with a Crossmodal-3600 figure in the published table (keys as the table writes them)."""
        figures = FIGURES.get((self.arch, self.pretrained)) or {}
        table = figures.get("xm3600_r1") or {}
        return sorted(k for k in table if k != "avg")  # type: ignore[union-attr]


_XLMR = "XLM-R SentencePiece unigram, 250k pieces, NFKC"
_NLLB = "NLLB SentencePiece BPE, 256k pieces + 202 language codes, NFKC"
_MC4 = "mc4 SentencePiece (T5), 250k pieces, open_clip 'canonicalize' cleaning"
_XLMR_LANGS = "the ~100 languages of XLM-R's pretraining; CLIP-trained on LAION-5B's multilingual captions"
_NLLB_LANGS = "the 202 language codes of NLLB-200 (Flores-200); each query needs its code"
_I18N_LANGS = "WebLI's multilingual captions (mc4 vocabulary)"

CATALOGUE: tuple[MultilingualModel, ...] = (
    MultilingualModel("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "xlm-roberta", 512, 224,
                      366.12, 87.85, 278.27, 8.82,
                      "HF xlm-roberta-base, mean pooling", _XLMR, _XLMR_LANGS),
    MultilingualModel("xlm-roberta-large-ViT-H-14", "frozen_laion5b_s13b_b90k", "xlm-roberta", 1024, 224,
                      1193.01, 632.08, 560.94, 334.59,
                      "HF xlm-roberta-large (frozen), mean pooling", _XLMR, _XLMR_LANGS),
    MultilingualModel("nllb-clip-base-siglip", "mrl", "nllb", 768, 384,
                      507.47, 93.18, 414.3, 112.13,
                      "HF nllb-200-distilled-600M encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("nllb-clip-base-siglip", "v1", "nllb", 768, 384,
                      507.47, 93.18, 414.3, 112.13,
                      "HF nllb-200-distilled-600M encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("nllb-clip-large-siglip", "mrl", "nllb", 1152, 384,
                      1195.5, 428.23, 767.27, 670.35,
                      "HF nllb-200-distilled-1.3B encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("nllb-clip-large-siglip", "v1", "nllb", 1152, 384,
                      1195.5, 428.23, 767.27, 670.35,
                      "HF nllb-200-distilled-1.3B encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("nllb-clip-base", "v1", "nllb", 512, 224,
                      501.89, 87.85, 414.04, 8.82,
                      "HF nllb-200-distilled-600M encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("nllb-clip-large", "v1", "nllb", 1024, 224,
                      1399.22, 632.08, 767.14, 334.59,
                      "HF nllb-200-distilled-1.3B encoder, first token", _NLLB, _NLLB_LANGS),
    MultilingualModel("ViT-B-16-SigLIP-i18n-256", "webli", "siglip-i18n", 768, 256,
                      370.63, 92.93, 277.7, 46.82,
                      "open_clip bidirectional transformer, last token", _MC4, _I18N_LANGS),
    MultilingualModel("ViT-SO400M-16-SigLIP-i18n-256", "webli", "siglip-i18n", 1152, 256,
                      None, None, None, None,
                      "open_clip bidirectional transformer, last token", _MC4, _I18N_LANGS),
)
# The English default, for comparison in listings ("why my Chinese query finds nothing").
DEFAULT_MODEL_FIGURES_KEY = ("ViT-B-32-256", "datacomp_s34b_b86k")
ENGLISH_DEFAULT = MultilingualModel(
    "ViT-B-32-256", "datacomp_s34b_b86k", "clip", 512, 256, 151.29, 87.86, 63.43, 11.5,
    "open_clip causal transformer, end-of-text token", "CLIP BPE, 49k pieces (English)",
    "English (DataComp captions); other languages poorly",
)


def find_model(spec: str) -> MultilingualModel | None:
    """The catalogue entry of ``ARCH:PRETRAINED`` (or of ``ARCH`` alone, its first tag), else None."""
    arch, _, tag = spec.partition(":")
    for model in CATALOGUE:
        if model.arch == arch and (not tag or model.pretrained == tag):
            return model
    return None


def model_rows(lang: str = "zh", *, include_default: bool = True) -> list[dict[str, object]]:
    """One JSON-ready row per catalogue model, best first by Crossmodal-3600 recall@1 in ``lang``.

    For ``mmsearch models --multilingual [--lang zh]``. Figures are fractions,
    None where unpublished: ``xm3600_r1`` / ``xm3600_r10`` / ``mscoco_r1`` in
    ``lang`` (the row's ``lang`` is the table's key for it), ``xm3600_r1_avg``
    over the table's 36 languages. With ``include_default`` the English default
    model comes last (``"multilingual": false``), for comparison. Raises
    ``InvalidQueryError`` for an unknown ``lang``.
    """
    resolve_lang(lang)
    rows = sorted((_row(m, lang) for m in CATALOGUE), key=lambda r: -(r["xm3600_r1"] or -1.0))  # type: ignore[operator]
    if include_default:
        rows.append(_row(ENGLISH_DEFAULT, lang))
    return rows


def _row(m: MultilingualModel, lang: str) -> dict[str, object]:
    return {
        "spec": m.spec, "multilingual": m.family != "clip", "family": m.family, "dim": m.dim,
        "image_size": m.image_size, "params_m": m.params_m, "image_gflops": m.image_gflops,
        "weights_mb_fp32_estimate": m.weights_mb_fp32, "needs_language": m.needs_language,
        "text_tower": m.text_tower, "tokenizer": m.tokenizer, "languages": m.languages,
        "lang": _figure_key(resolve_lang(lang), mscoco=False),
        "xm3600_r1": m.figure("xm3600_r1", lang), "xm3600_r10": m.figure("xm3600_r10", lang),
        "mscoco_r1": m.figure("mscoco_r1", lang), "xm3600_r1_avg": m.figure("xm3600_r1", "avg"),
        "evaluated_languages": len(m.evaluated_languages()),
    }


def default_model_figure(metric: str = "xm3600_r1", lang: str = "zh") -> float | None:
    """The English default model's published figure, to show beside the multilingual ones."""
    table = FIGURES[DEFAULT_MODEL_FIGURES_KEY].get(metric)
    key = lang if lang == "avg" else _figure_key(resolve_lang(lang), mscoco=metric.startswith("mscoco"))
    return float(table[key]) if isinstance(table, dict) and key in table else None


# -- languages ------------------------------------------------------------------------

# ISO 639-1 / BCP 47 tags -> NLLB (Flores-200) codes. A tag's region picks the Chinese script.
LANG_TO_NLLB: dict[str, str] = {
    "en": "eng_Latn", "zh": "zho_Hans", "zh-hans": "zho_Hans", "zh-cn": "zho_Hans", "zh-sg": "zho_Hans",
    "zh-hant": "zho_Hant", "zh-tw": "zho_Hant", "zh-hk": "zho_Hant", "zh-mo": "zho_Hant", "yue": "yue_Hant",
    "ja": "jpn_Jpan", "ko": "kor_Hang", "ar": "arb_Arab", "fa": "pes_Arab", "ur": "urd_Arab", "he": "heb_Hebr",
    "yi": "ydd_Hebr", "ru": "rus_Cyrl", "uk": "ukr_Cyrl", "be": "bel_Cyrl", "bg": "bul_Cyrl", "sr": "srp_Cyrl",
    "mk": "mkd_Cyrl", "kk": "kaz_Cyrl", "ky": "kir_Cyrl", "tg": "tgk_Cyrl", "mn": "khk_Cyrl", "tt": "tat_Cyrl",
    "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "it": "ita_Latn", "pt": "por_Latn", "pt-br": "por_Latn",
    "nl": "nld_Latn", "pl": "pol_Latn", "tr": "tur_Latn", "vi": "vie_Latn", "id": "ind_Latn", "ms": "zsm_Latn",
    "sv": "swe_Latn", "da": "dan_Latn", "no": "nob_Latn", "nb": "nob_Latn", "nn": "nno_Latn", "fi": "fin_Latn",
    "cs": "ces_Latn", "sk": "slk_Latn", "hu": "hun_Latn", "ro": "ron_Latn", "hr": "hrv_Latn", "bs": "bos_Latn",
    "sl": "slv_Latn", "et": "est_Latn", "lv": "lvs_Latn", "lt": "lit_Latn", "ca": "cat_Latn", "eu": "eus_Latn",
    "gl": "glg_Latn", "sw": "swh_Latn", "tl": "tgl_Latn", "fil": "tgl_Latn", "af": "afr_Latn", "is": "isl_Latn",
    "ga": "gle_Latn", "cy": "cym_Latn", "mt": "mlt_Latn", "sq": "als_Latn", "uz": "uzn_Latn", "az": "azj_Latn",
    "mi": "mri_Latn", "eo": "epo_Latn", "ha": "hau_Latn", "yo": "yor_Latn", "ig": "ibo_Latn", "zu": "zul_Latn",
    "xh": "xho_Latn", "so": "som_Latn", "jv": "jav_Latn", "su": "sun_Latn", "ht": "hat_Latn", "lb": "ltz_Latn",
    "el": "ell_Grek", "th": "tha_Thai", "lo": "lao_Laoo", "km": "khm_Khmr", "my": "mya_Mymr", "ka": "kat_Geor",
    "hy": "hye_Armn", "am": "amh_Ethi", "ti": "tir_Ethi", "hi": "hin_Deva", "mr": "mar_Deva", "ne": "npi_Deva",
    "bn": "ben_Beng", "as": "asm_Beng", "pa": "pan_Guru", "gu": "guj_Gujr", "or": "ory_Orya", "ta": "tam_Taml",
    "te": "tel_Telu", "kn": "kan_Knda", "ml": "mal_Mlym", "si": "sin_Sinh", "bo": "bod_Tibt", "ug": "uig_Arab",
    "ps": "pbt_Arab", "ckb": "ckb_Arab", "sd": "snd_Arab",
}
_NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


def resolve_lang(value: str) -> str:
    """An NLLB code for ``--lang``: ``zh``, ``zh-TW``, ``zh_Hant``, ``fr``, or an NLLB code (``fra_Latn``) itself.

    Raises ``InvalidQueryError`` naming examples for anything else.
    """
    raw = (value or "").strip()
    if _NLLB_CODE.match(raw):
        return raw
    tag = raw.lower().replace("_", "-")
    if tag in LANG_TO_NLLB:
        return LANG_TO_NLLB[tag]
    base = tag.split("-")[0]
    if base in LANG_TO_NLLB and base != "zh":  # "de-AT" -> German; Chinese needs a script or region
        return LANG_TO_NLLB[base]
    raise InvalidQueryError(
        f"unknown language {value!r}: give a code such as zh, zh-TW, ja, ko, ar, ru, fr, de, or an NLLB code "
        "such as zho_Hans"
    )


# First code point of each run -> script. Code points between runs not listed are "Common" (digits, punctuation,
# symbols, emoji), which say nothing about the language.
_SCRIPT_STARTS: tuple[tuple[int, str | None], ...] = (
    (0x0000, None), (0x0041, "Latn"), (0x005B, None), (0x0061, "Latn"), (0x007B, None), (0x00C0, "Latn"),
    (0x00D7, None), (0x00D8, "Latn"), (0x00F7, None), (0x00F8, "Latn"), (0x02B0, None), (0x0370, "Grek"),
    (0x0400, "Cyrl"), (0x0530, "Armn"), (0x0590, "Hebr"), (0x0600, "Arab"), (0x0700, None), (0x0750, "Arab"),
    (0x0780, None), (0x0900, "Deva"), (0x0980, "Beng"), (0x0A00, "Guru"), (0x0A80, "Gujr"), (0x0B00, "Orya"),
    (0x0B80, "Taml"), (0x0C00, "Telu"), (0x0C80, "Knda"), (0x0D00, "Mlym"), (0x0D80, "Sinh"), (0x0E00, "Thai"),
    (0x0E80, "Laoo"), (0x0F00, "Tibt"), (0x1000, "Mymr"), (0x10A0, "Geor"), (0x1100, "Hang"), (0x1200, "Ethi"),
    (0x13A0, None), (0x1780, "Khmr"), (0x1800, None), (0x1E00, "Latn"), (0x1F00, "Grek"), (0x2000, None),
    (0x2E80, "Hani"), (0x3000, None), (0x3040, "Kana"), (0x3100, None), (0x3130, "Hang"), (0x3190, None),
    (0x31F0, "Kana"), (0x3200, None), (0x3400, "Hani"), (0x4DC0, None), (0x4E00, "Hani"), (0xA000, None),
    (0xAC00, "Hang"), (0xD7B0, None), (0xF900, "Hani"), (0xFB00, None), (0xFB50, "Arab"), (0xFE00, None),
    (0xFE70, "Arab"), (0xFF00, None), (0xFF21, "Latn"), (0xFF3B, None), (0xFF41, "Latn"), (0xFF5B, None),
    (0xFF66, "Kana"), (0xFFA0, "Hang"), (0xFFDD, None), (0x20000, "Hani"), (0x2FA20, None),
)
_STARTS = [start for start, _ in _SCRIPT_STARTS]
_SCRIPT_LANG: dict[str, str] = {
    "Latn": "eng_Latn", "Grek": "ell_Grek", "Cyrl": "rus_Cyrl", "Armn": "hye_Armn", "Hebr": "heb_Hebr",
    "Arab": "arb_Arab", "Deva": "hin_Deva", "Beng": "ben_Beng", "Guru": "pan_Guru", "Gujr": "guj_Gujr",
    "Orya": "ory_Orya", "Taml": "tam_Taml", "Telu": "tel_Telu", "Knda": "kan_Knda", "Mlym": "mal_Mlym",
    "Sinh": "sin_Sinh", "Thai": "tha_Thai", "Laoo": "lao_Laoo", "Tibt": "bod_Tibt", "Mymr": "mya_Mymr",
    "Geor": "kat_Geor", "Hang": "kor_Hang", "Ethi": "amh_Ethi", "Khmr": "khm_Khmr", "Kana": "jpn_Jpan",
    "Hani": "zho_Hans",
}
# Scripts one language owns: the script alone names it. The others are shared and only suggest.
_SHARED_SCRIPTS = frozenset({"Latn", "Cyrl", "Arab", "Deva", "Beng", "Hebr", "Ethi"})
# Letters that mark a language within a shared script.
_LETTER_HINTS: tuple[tuple[str, str, str], ...] = (
    ("Arab", "پچژگ", "pes_Arab"), ("Arab", "ےٹڈڑں", "urd_Arab"),
    ("Cyrl", "ґєії", "ukr_Cyrl"), ("Cyrl", "ў", "bel_Cyrl"), ("Cyrl", "ђћџјљњ", "srp_Cyrl"),
    ("Cyrl", "әғқңөұүһ", "kaz_Cyrl"),
)
# Characters written one way in simplified and another in traditional Chinese (frequent ones and the
# demo's words), as simplified-traditional pairs.
_SIMPLIFIED_TRADITIONAL = (
    "这這 个個 们們 来來 时時 说說 为為 国國 会會 对對 发發 学學 还還 进進 过過 动動 种種 样樣 "
    "经經 实實 现現 点點 开開 关關 长長 门門 问問 间間 东東 车車 马馬 鸟鳥 鱼魚 龙龍 边邊 红紅 "
    "绿綠 蓝藍 黄黃 伞傘 条條 纹紋 衬襯 带帶 图圖 书書 电電 话話 买買 卖賣 气氣 风風 飞飛 云雲 "
    "爱愛 猫貓 岛島 湾灣 桥橋 楼樓 树樹 叶葉 园園 观觀 灯燈 机機 场場 视視 频頻 网網 页頁 厅廳 "
    "远遠 钟鐘 铁鐵 银銀 钱錢 饭飯 馆館 汤湯 净淨 脏髒 烟煙 热熱 应應 总總 区區 级級 该該 两兩 "
    "头頭 满滿 块塊 处處 听聽 见見 觉覺 亲親 宝寶 贝貝 丝絲 绸綢 鲜鮮 艳豔 盘盤 帘簾 镜鏡 双雙 "
    "发髮"
).split()
_SIMPLIFIED = frozenset(pair[0] for pair in _SIMPLIFIED_TRADITIONAL)
_TRADITIONAL = frozenset(pair[1] for pair in _SIMPLIFIED_TRADITIONAL)


def script_of(char: str) -> str | None:
    """The ISO 15924 script of one character among those this module tells apart; None for Common ones."""
    return _SCRIPT_STARTS[bisect.bisect_right(_STARTS, ord(char)) - 1][1]


@dataclass(frozen=True)
class LanguageGuess:
    """What :func:`detect_language` found: an NLLB code (or None), the script, and how sure the script makes it."""

    code: str | None
    script: str | None
    certain: bool  # False for shared scripts (Latin, Cyrillic, Arabic ...): --lang would settle it


def detect_language(text: str) -> LanguageGuess:
    """Guess a query's NLLB language code from its script.

    Kana anywhere means Japanese (kanji alone read as Chinese); Chinese is
    simplified unless traditional-only characters outnumber simplified-only
    ones. A query that mixes Latin with another script ("iPhone 手机壳") is read
    in the other script: Latin words in such a query are mostly names.
    """
    counts: dict[str, int] = {}
    for char in text:
        script = script_of(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return LanguageGuess(None, None, False)
    if "Kana" in counts:
        return LanguageGuess("jpn_Jpan", "Kana", True)
    others = {s: n for s, n in counts.items() if s != "Latn"}
    script = max(others, key=lambda s: others[s]) if others else "Latn"
    if script == "Hani":
        simplified = sum(c in _SIMPLIFIED for c in text)
        traditional = sum(c in _TRADITIONAL for c in text)
        return LanguageGuess("zho_Hant" if traditional > simplified else "zho_Hans", "Hani", True)
    code = _SCRIPT_LANG[script]
    for hint_script, letters, hinted in _LETTER_HINTS:
        if hint_script == script and any(c in letters for c in text):
            code = hinted
            break
    return LanguageGuess(code, script, script not in _SHARED_SCRIPTS)


def query_language(text: str, lang: str | None = None) -> str:
    """The NLLB code a query is encoded under: ``lang`` when given, else the detected one, else English."""
    if lang:
        return resolve_lang(lang)
    return detect_language(text).code or DEFAULT_NLLB_LANGUAGE


def _figure_key(nllb_code: str, mscoco: bool) -> str:
    """The published table's language key for an NLLB code (its mscoco columns write Japanese ``jp``)."""
    if nllb_code.startswith("zho_"):
        return "zh"
    if nllb_code == "tgl_Latn":
        return "fil"
    if nllb_code == "jpn_Jpan" and mscoco:
        return "jp"
    for tag, code in LANG_TO_NLLB.items():
        if code == nllb_code and "-" not in tag:
            return tag
    return nllb_code


__all__ = [
    "CATALOGUE", "DEFAULT_NLLB_LANGUAGE", "ENGLISH_DEFAULT", "FIGURES_SOURCE", "LANG_TO_NLLB", "LanguageGuess", "MultilingualModel",
    "PARAMS_SOURCE", "default_model_figure", "detect_language", "find_model", "model_rows", "query_language",
    "resolve_lang", "script_of",
]
