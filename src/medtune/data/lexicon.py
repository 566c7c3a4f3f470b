"""Medical lexicons and longest-match term finding for the term-masking augmentation.

A lexicon file has one term per line, optionally followed by a TAB and a category; `#` starts a comment
line and blank lines are skipped. The shipped lexicons (`medical`, `reference`) use the same format, so a
copy of `medical.tsv` is a ready starting point for a lexicon of one's own.

`medical.tsv` is generated from two public sources by `build_medical_lexicon` (see
`resources/lexicon/SOURCE.md`); rebuild it with
`python -m medtune.data.lexicon THUOCL_medical.txt ICD-10-CN_disease.csv src/medtune/resources/lexicon/medical.tsv`.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SHIPPED_LEXICONS = ("medical", "reference")
SHIPPED_FOLDER = resources.files("medtune") / "resources" / "lexicon"
DEFAULT_CATEGORY = "medical"

# The tag that replaces `{category}` in a mask style such as "[{category}]". Categories not listed here
# (e.g. a user's own "科室") are used as written.
CATEGORY_TAGS = {
    "disease": "疾病",
    "symptom": "症状",
    "drug": "药物",
    "examination": "检查",
    "treatment": "治疗",
    "body_part": "部位",
    "medical": "医学术语",
    "reference": "术语",
}

# Suffix rules that give a THUOCL term a category; the longest matching suffix wins, and a suffix mapped to
# None stops shorter suffixes from applying (技术 is not a surgery, 萼片 is not a tablet). Whole words are
# suffixes of themselves: the exceptions at the end were found by reading the short terms each rule catches.
SUFFIX_CATEGORIES: dict[str, str | None] = {
    **dict.fromkeys(
        [
            "炎",
            "病",
            "癌",
            "瘤",
            "症",
            "综合征",
            "综合症",
            "结石",
            "骨折",
            "血栓",
            "障碍",
            "内障",
            "不全",
            "衰竭",
            "硬化",
            "中毒",
            "溃疡",
            "贫血",
            "失常",
            "畸形",
            "感染",
            "损伤",
            "积液",
        ],
        "disease",
    ),
    **dict.fromkeys(
        ["痛", "瘙痒", "眩晕", "头晕", "腹胀", "腹泻", "泄泻", "咳嗽", "呕吐", "恶心", "发热", "发烧", "出血", "水肿"],
        "symptom",
    ),
    **dict.fromkeys(
        [
            "片",
            "胶囊",
            "注射液",
            "颗粒",
            "丸",
            "口服液",
            "乳膏",
            "软膏",
            "气雾剂",
            "喷雾剂",
            "滴眼液",
            "糖浆",
            "霉素",
            "沙星",
            "西林",
            "他汀",
        ],
        "drug",
    ),
    **dict.fromkeys(["检查", "造影", "电图", "试验", "活检"], "examination"),
    **dict.fromkeys(["术", "疗法", "移植"], "treatment"),
    **dict.fromkeys(["骨", "肌", "腺", "动脉", "静脉", "穴", "脏"], "body_part"),
    # exceptions
    **dict.fromkeys(["白术", "苍术", "莪术", "龙骨", "乌贼骨", "消炎痛", "消心痛", "索密痛", "索米痛"], "drug"),
    **dict.fromkeys(["胸片", "牙片", "涂片"], "examination"),
    **dict.fromkeys(["睾丸"], "body_part"),
    **dict.fromkeys(
        [
            "技术",
            "学术",
            "艺术",
            "美术",
            "武术",
            "战术",
            "止痛",
            "镇痛",
            "消炎",
            "起病",
            "适应症",
            "禁忌症",
            "切片",
            "照片",
            "薄片",
            "萼片",
            "盾片",
            "斑片",
            "花被片",
            "载玻片",
            "蜡片",
            "骨片",
            "筋骨",
            "接骨",
            "无骨",
            "甲骨",
            "肮脏",
        ],
        None,
    ),
}

# ICD-10 chapter R holds "symptoms, signs and abnormal clinical and laboratory findings"; every other
# chapter names diagnoses (diseases, injuries, poisonings).
ICD_SYMPTOM_CHAPTER = "R"
# Words that mark an ICD name as a classification bucket ("其他…", "…,不可归类在他处者") rather than a term
# someone would write; "[" is left over when a name has two bracketed alternatives.
ICD_BUCKET_MARKERS = (
    "[",
    "其他",
    "未特指",
    "他处",
    "不明",
    "和",
    "或",
    "、",
    "的",
    "与",
    "伴",
    "及",
    "(",
    "（",
    "在",
    "引起",
    "所致",
    "有关",
    "特发于",
    "累及",
    "除外",
    "包括",
)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Characters no text line holds (TAB is the field separator); a line with one means a binary file."""


class LexiconError(ValueError):
    """A lexicon file is missing or malformed; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class TermMatch:
    """One occurrence of a lexicon term in a text: `text[start:end] == term`."""

    start: int
    end: int
    term: str
    category: str


_TERMINAL = ""  # trie key that marks the end of a term; never a character of the text


class Lexicon:
    """A set of terms with categories, searched by greedy left-to-right longest match.

    A character trie makes the search one dictionary step per character looked at, so that
    糖尿病性白内障 is found as one term even though 糖尿病 is a term too.
    """

    def __init__(self, categories: dict[str, str], source: str) -> None:
        if not categories:
            raise LexiconError(f"{source}: no terms (blank lines and # comments don't count)")
        self.source = source
        self.categories = categories
        self._trie: dict = {}
        for term, category in categories.items():
            node = self._trie
            for char in term:
                node = node.setdefault(char, {})
            node[_TERMINAL] = category

    def __len__(self) -> int:
        return len(self.categories)

    def terms(self) -> list[str]:
        """The terms in file order (the reference algorithm draws among them in this order)."""
        return list(self.categories)

    def find(self, text: str) -> list[TermMatch]:
        """Non-overlapping occurrences, scanning left to right and taking the longest term at each start."""
        matches = []
        position, length = 0, len(text)
        while position < length:
            node = self._trie.get(text[position])
            match_end = 0
            cursor = position + 1
            while node is not None:
                if _TERMINAL in node:
                    match_end = cursor
                if cursor == length:
                    break
                node = node.get(text[cursor])
                cursor += 1
            if match_end:
                term = text[position:match_end]
                matches.append(TermMatch(position, match_end, term, self.categories[term]))
                position = match_end
            else:
                position += 1
        return matches


def category_tag(category: str) -> str:
    """The Chinese tag shown for a category inside a mask, e.g. symptom -> 症状."""
    return CATEGORY_TAGS.get(category, category)


def load_lexicon(name_or_path: str) -> Lexicon:
    """`medical` or `reference` loads a shipped lexicon; anything else is read as a lexicon file path."""
    if name_or_path in SHIPPED_LEXICONS:
        shipped = SHIPPED_FOLDER / f"{name_or_path}.tsv"
        return parse_lexicon(shipped.read_bytes(), str(shipped))
    path = Path(name_or_path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LexiconError(
            f"{path}: lexicon file not found (shipped lexicons: {', '.join(SHIPPED_LEXICONS)})"
        ) from None
    except IsADirectoryError:
        raise LexiconError(f"{path}: is a folder, expected a lexicon file") from None
    except OSError as err:
        raise LexiconError(f"{path}: cannot read the lexicon file: {err.strerror}") from None
    return parse_lexicon(data, str(path))


def parse_lexicon(data: bytes, source: str) -> Lexicon:
    """Parse lexicon file bytes; every problem is reported as `source:line: what is wrong`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise LexiconError(
            f"{source}:{line}: not valid UTF-8 (byte {data[err.start]:#04x}); save the file as UTF-8"
        ) from None
    categories: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        control = _CONTROL.search(line.removesuffix("\r"))
        if control:
            raise LexiconError(
                f"{source}:{number}: control character U+{ord(control.group()):04X}; a lexicon is a text file "
                "of `term` or `term<TAB>category` lines, not a binary file"
            )
        fields = line.split("\t")
        if len(fields) > 2:
            raise LexiconError(
                f"{source}:{number}: expected `term` or `term<TAB>category`, found {len(fields)} TAB-separated fields"
            )
        term = fields[0].strip()
        category = fields[1].strip() if len(fields) == 2 else DEFAULT_CATEGORY
        if not term:
            raise LexiconError(f"{source}:{number}: empty term before the TAB")
        if not category:
            raise LexiconError(
                f"{source}:{number}: empty category after the TAB (leave out the TAB for the default "
                f"`{DEFAULT_CATEGORY}`)"
            )
        if category.isdigit():  # a word list with frequencies would otherwise mask terms as [606946]
            raise LexiconError(
                f"{source}:{number}: category {category!r} is a number; for a word list with frequencies "
                f"(THUOCL's `term<TAB>frequency`), keep only the terms: cut -f1 {source} > terms.txt"
            )
        if term in categories and categories[term] != category:
            raise LexiconError(
                f"{source}:{number}: term {term!r} has category {category!r} here but {categories[term]!r} on line "
                f"{first_line[term]}"
            )
        categories.setdefault(term, category)
        first_line.setdefault(term, number)
    return Lexicon(categories, source)


def suffix_category(term: str) -> str:
    """The category a THUOCL term gets from `SUFFIX_CATEGORIES`, or `medical` when no rule applies."""
    for cut in range(len(term)):
        suffix = term[cut:]
        if suffix in SUFFIX_CATEGORIES:
            return SUFFIX_CATEGORIES[suffix] or DEFAULT_CATEGORY
    return DEFAULT_CATEGORY


def icd_terms(name: str) -> list[str]:
    """The terms an ICD-10 name yields: the part before the first comma (the rest is a coding note), with a
    bracketed alternative name written out as a second term (麻风[汉森病] -> 麻风, 汉森病;
    分离[转换]性障碍 -> 分离性障碍, 转换性障碍); classification buckets ("其他…") yield nothing."""
    head = name.split(",")[0].strip()
    if "[" in head and "]" in head:
        before, rest = head.split("[", 1)
        alternative, after = rest.split("]", 1)
        names = [before + after, alternative + after]
    else:
        names = [head]
    return [term for term in names if term and not any(marker in term for marker in ICD_BUCKET_MARKERS)]


def read_stop_list() -> set[str]:
    lines = (SHIPPED_FOLDER / "stoplist.txt").read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def build_medical_lexicon(thuocl_file: Path, icd_file: Path, stop_list: set[str]) -> dict[str, str]:
    """Merge THUOCL's medical word list and ICD-10-CN's disease names into `{term: category}`.

    ICD categories (by chapter) beat suffix rules, which beat the plain `medical` category; stop-listed
    words and single characters are left out. Nothing is added that is not in a source.
    """
    categories: dict[str, str] = {}
    for number, line in enumerate(thuocl_file.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            raise LexiconError(f"{thuocl_file}:{number}: expected `term<TAB>frequency`, got {line!r}")
        categories[fields[0].strip()] = suffix_category(fields[0].strip())
    icd_lines = icd_file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(icd_lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            raise LexiconError(f"{icd_file}:{number}: expected `code<TAB>disease`, got {line!r}")
        code, name = fields
        category = "symptom" if code.startswith(ICD_SYMPTOM_CHAPTER) else "disease"
        for term in icd_terms(name):
            categories[term] = category
    return {term: category for term, category in categories.items() if len(term) > 1 and term not in stop_list}


def write_lexicon(categories: dict[str, str], out_file: Path, header: str) -> None:
    """Write `term<TAB>category` lines grouped by category, each group sorted, under a `#` header."""
    rows = sorted(categories.items(), key=lambda item: (item[1], item[0]))
    lines = [f"# {line}" for line in header.splitlines()] + [f"{term}\t{category}" for term, category in rows]
    out_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped medical lexicon from THUOCL and ICD-10-CN.")
    parser.add_argument("thuocl_file", type=Path, help="THUOCL_medical.txt (term<TAB>frequency)")
    parser.add_argument("icd_file", type=Path, help="ICD-10-CN disease list (code<TAB>disease, with a header line)")
    parser.add_argument("out_file", type=Path, help="where to write medical.tsv")
    args = parser.parse_args()
    categories = build_medical_lexicon(args.thuocl_file, args.icd_file, read_stop_list())
    counts = ", ".join(f"{category}: {count}" for category, count in sorted(Counter(categories.values()).items()))
    header = (
        "Generated by `python -m medtune.data.lexicon` from THUOCL_medical.txt (MIT, thunlp/THUOCL) and\n"
        "ICD-10-CN_disease.csv (MIT, chaseliu/ICD-10-CN); see SOURCE.md for the rules. Edit a copy, not this file.\n"
        + counts
    )
    write_lexicon(categories, args.out_file, header)
    print(f"{args.out_file}: {len(categories)} terms ({counts})")


if __name__ == "__main__":
    _main()
