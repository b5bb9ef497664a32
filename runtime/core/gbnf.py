"""GBNF as llama.cpp reads it.

`parse` reads a grammar the way llama.cpp's parser does (grammars/README.md):
rules `name ::= alternatives`, each a sequence of "literals", [classes], rule
names, (groups), `.`, <token>/<[id]> (optionally negated with !), with
repetition suffixes * + ? {m} {m,} {m,n}; `#` comments; newlines end a rule
except inside parentheses and after '|'.  It reports the first problem with
its position, and refuses what llama.cpp would take and then misbehave on:
repetition bounds above its limit (it silently drops a larger maximum),
groups nested so deep that its recursive parser could exhaust the stack.

What the parsed grammar will cost llama.cpp is measured in gbnf_cost.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# llama.cpp's MAX_REPETITION_THRESHOLD: the largest m or n in {m,n}, and the
# most rules one symbol's repetition may generate.
REPEAT_LIMIT = 2000
# Groups nested deeper than this are refused (llama.cpp parses them by
# recursion; JSON-schema grammars stay far below).
MAX_NESTING = 64
_NAME = re.compile(r"[A-Za-z0-9-]+")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}")
_TOKEN = re.compile(r"<(\[\d+\]|[^<>\s]+)>")


class GrammarError(Exception):
    """pos: where in the text, or None for a property of the whole grammar."""

    def __init__(self, pos: int | None, message: str) -> None:
        super().__init__(message)
        self.pos = pos


@dataclass(frozen=True)
class Item:
    """One symbol of a sequence with its repetition bounds (hi None:
    unbounded).  kind: "t" a terminal of `size` elements, "e" the empty
    literal, "r" a reference to rule `name` (groups are rules too)."""
    kind: str
    name: str = ""
    size: int = 1
    lo: int = 1
    hi: int | None = 1
    sig: str = ""   # a terminal's text, to tell repeated literals apart


@dataclass
class Grammar:
    rules: dict[str, list[list[Item]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # group -> "a group in rule 'x'"


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.g = Grammar()
        self.defined: dict[str, int] = {}
        self.used: list[tuple[str, int]] = []
        self.symbols: set[str] = set()   # llama.cpp's symbol table, by name
        self.n_symbols = 0               # ... and its size, generated ids included
        self.rule = ""
        self.depth = 0

    def fail(self, message: str) -> GrammarError:
        return GrammarError(self.i, message)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def symbol(self, name: str) -> None:
        if name not in self.symbols:
            self.symbols.add(name)
            self.n_symbols += 1

    def space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] not in "\r\n":
                    self.i += 1
            else:
                return

    def name(self) -> str:
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.fail("expected a rule name")
        self.i = m.end()
        return m.group()

    def escape(self) -> None:
        self.i += 1  # the backslash
        c = self.peek()
        widths = {"x": 2, "u": 4, "U": 8}
        if c in widths:
            digits = self.s[self.i + 1:self.i + 1 + widths[c]]
            if len(digits) != widths[c] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {widths[c]} hex digits")
            self.i += 1 + widths[c]
        elif c and c in 'nrt\\"[]-^':
            self.i += 1
        else:
            raise self.fail(f"unknown escape \\{c}" if c else "unfinished escape")

    def literal(self, close: str) -> int:
        """Skips a "literal" or [class]; returns how many characters it
        holds (the elements llama.cpp makes of it, near enough)."""
        start = self.i
        self.i += 1
        n = 0
        while self.peek() != close:
            c = self.peek()
            if not c or (close == '"' and c in "\r\n"):
                self.i = start
                what = "string" if close == '"' else "character class"
                raise self.fail(f"unterminated {what}")
            if c == "\\":
                self.escape()
            else:
                self.i += 1
            n += 1
        self.i += 1
        return n

    def repetition(self) -> tuple[int, int | None]:
        start = self.i
        m = _REPEAT.match(self.s, self.i)
        if not m:
            raise self.fail("expected {m}, {m,} or {m,n}")
        lo = int(m.group(1))
        hi: int | None = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if hi is not None and hi < lo:
            raise self.fail(f"repetition {{{lo},{hi}}}: the maximum is below the minimum")
        if lo > REPEAT_LIMIT or (hi is not None and hi > REPEAT_LIMIT):
            self.i = start
            # llama.cpp refuses a larger minimum and silently makes a larger
            # maximum unbounded.
            raise self.fail(f"repetition {m.group()}: at most {REPEAT_LIMIT} repetitions "
                            "(llama.cpp's limit)")
        self.i = m.end()
        return lo, hi

    def group(self, at: int) -> tuple[Item, int]:
        """A parenthesised group, as a rule of its own (as llama.cpp makes
        it); returns its item and how many symbols it added."""
        if self.depth >= MAX_NESTING:
            raise self.fail(f"groups nested more than {MAX_NESTING} deep")
        before = self.n_symbols
        name = f"({len(self.g.labels) + 1})"
        self.g.labels[name] = f"a group in rule {self.rule!r}"
        self.n_symbols += 1
        self.depth += 1
        self.i += 1
        alts = self.alternatives(nested=True)
        self.depth -= 1
        if self.peek() != ")":
            raise self.fail("expected ')'")
        self.i += 1
        self.g.rules[name] = alts
        return Item("r", name), max(1, self.n_symbols - before)

    def repeat(self, item: Item, lo: int, hi: int | None, prev_rules: int) -> tuple[Item, int]:
        """Applies a repetition suffix the way llama.cpp does, including its
        limit on the rules one symbol's repetitions may generate."""
        total = hi if hi is not None and hi > 0 else max(lo, 1)
        if prev_rules * total > REPEAT_LIMIT:
            raise self.fail(f"this repetition would make {prev_rules * total} rules; llama.cpp "
                            f"allows {REPEAT_LIMIT} per symbol (repeat a named rule instead of "
                            "a group, or split the repetition)")
        self.n_symbols += 1 if hi is None else hi - lo
        if item.lo == 1 and item.hi == 1:
            return Item(item.kind, item.name, item.size, lo, hi, item.sig), prev_rules * total
        # A repeated repetition: llama.cpp repeats the expansion as a whole.
        name = f"({len(self.g.labels) + 1})"
        self.g.labels[name] = f"a group in rule {self.rule!r}"
        self.g.rules[name] = [[item]]
        return Item("r", name, 1, lo, hi), prev_rules * total

    def sequence(self, nested: bool) -> list[Item]:
        items: list[Item] = []
        prev_rules = 1
        while True:
            self.space(nested)
            c = self.peek()
            if not c:
                return items
            at = self.i
            if c == '"':
                n = self.literal('"')
                text = self.s[at:self.i]
                items.append(Item("t", size=n, sig=text) if n else Item("e", size=0))
            elif c == "[":
                n = self.literal("]")
                items.append(Item("t", size=max(1, n), sig=self.s[at:self.i]))
            elif c == ".":
                self.i += 1
                items.append(Item("t", sig="."))
            elif c == "(":
                item, prev_rules = self.group(at)
                items.append(item)
                continue
            elif c in "!<":
                if c == "!":
                    self.i += 1
                m = _TOKEN.match(self.s, self.i)
                if not m:
                    raise self.fail("expected a token reference such as <[42]> or <tok>")
                self.i = m.end()
                items.append(Item("t", sig=self.s[at:self.i]))
            elif _NAME.match(c):
                ref = self.name()
                after = self.i
                self.space(nested)
                if self.s.startswith("::=", self.i):
                    self.i = at
                    if nested:
                        raise self.fail(f"rule {ref!r} starts inside parentheses")
                    return items  # the next rule begins
                self.i = after
                self.used.append((ref, at))
                self.symbol(ref)
                items.append(Item("r", ref))
            elif c in "*+?{":
                if not items:
                    raise self.fail(f"{c!r} has nothing to repeat")
                if c == "{":
                    lo, hi = self.repetition()
                else:
                    self.i += 1
                    lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                items[-1], prev_rules = self.repeat(items[-1], lo, hi, prev_rules)
                continue
            else:
                return items
            prev_rules = 1

    def alternatives(self, nested: bool) -> list[list[Item]]:
        alts = [self.sequence(nested)]
        while self.peek() == "|":
            self.i += 1
            self.space(True)
            alts.append(self.sequence(nested))
        return alts

    def one_rule(self) -> None:
        at = self.i
        name = self.name()
        self.space(False)
        if not self.s.startswith("::=", self.i):
            raise self.fail("expected '::='")
        self.i += 3
        self.space(True)
        if name in self.defined:
            # llama.cpp would silently keep only the last definition.
            raise GrammarError(at, f"rule {name!r} is defined twice")
        self.defined[name] = at
        self.symbol(name)
        self.rule = name
        self.g.rules[name] = self.alternatives(nested=False)
        self.space(False)
        c = self.peek()
        if c and c not in "\r\n":
            raise self.fail(f"unexpected {c!r}")

    def parse(self) -> Grammar:
        self.space(True)
        while self.i < len(self.s):
            self.one_rule()
            self.space(True)
        if "root" not in self.defined:
            raise GrammarError(0, "no 'root' rule (generation starts there)")
        for ref, at in self.used:
            if ref not in self.defined:
                raise GrammarError(at, f"rule {ref!r} is used but never defined")
        return self.g


def parse(text: str) -> Grammar:
    return _Parser(text).parse()
