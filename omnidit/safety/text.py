"""Text normalisation and blocked-term matching, resistant to the usual tricks.

A term matches case-insensitively on word boundaries, in the text as written and in its
normalised forms:
- Unicode NFKC (full-width `ｋｉｌｌ` -> `kill`, ligatures, compatibility forms), accents and
  other combining marks dropped, invisible format characters (zero-width spaces, joiners, bidi
  controls) removed, case folded;
- separators inside a term ignored: `k i l l`, `k.i.l.l`, `k-i_l*l` all match `kill` (but
  `skill` and `killer` do not: the ends are still word boundaries);
- a second form with common digit/symbol substitutions undone (`k1ll`, `$hoot`, `4ss4ult`).
Terms in scripts written without spaces (CJK, kana) match as substrings.
"""

from __future__ import annotations

import re
import unicodedata

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_SEP = r"[\W_]*"  # anything but a letter or digit, any number of times (also none)
_LEFT = r"(?<![^\W_])"  # not preceded by a letter or digit
_RIGHT = r"(?![^\W_])"  # not followed by one


def fold(text: str) -> str:
    """NFKC, combining marks and format characters dropped, case folded."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    return unicodedata.normalize("NFKC", text).casefold()


def variants(text: str) -> list[str]:
    """The forms of `text` a term is looked for in."""
    folded = fold(text)
    out = [folded]
    leet = folded.translate(_LEET)
    if leet != folded:
        out.append(leet)
    return out


def _unspaced(c: str) -> bool:
    """A character of a script written without spaces between words (no word boundaries to ask for)."""
    try:
        name = unicodedata.name(c)
    except ValueError:
        return False
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "IDEOGRAPHIC"))


def term_pattern(term: str) -> str | None:
    """The regex source matching `term` as described above (None for a term without letters/digits)."""
    chars = [c for c in fold(term) if c.isalnum()]
    if not chars:
        return None
    body = _SEP.join(re.escape(c) for c in chars)
    left = "" if _unspaced(chars[0]) else _LEFT
    right = "" if _unspaced(chars[-1]) else _RIGHT
    return f"{left}{body}{right}"


def compile_terms(terms: list[str]) -> re.Pattern | None:
    """One alternation for a category's terms (None when it has none)."""
    sources = sorted({p for p in (term_pattern(t) for t in terms) if p is not None}, key=len, reverse=True)
    return re.compile("|".join(f"(?:{s})" for s in sources)) if sources else None
