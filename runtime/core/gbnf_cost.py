"""What a parsed GBNF grammar (gbnf.py) will cost llama.cpp's grammar sampler.

`cost` measures what llama.cpp's grammar sampler pays, so that one request
cannot make it unbounded:

- compiled size: llama.cpp expands `S{m,n}` into m copies of S and n-m new
  rules; `elements` counts what the expansion makes.
- parse stacks: the sampler keeps one stack per way the text so far can
  continue.  A chain of nullable rules multiplies them: `root ::= a a a ...`
  with `a ::= "x" | "y" |` opens two per `a` before the first character.
  `stacks` bounds how many can be open at once, and a grammar whose stacks
  grow with the depth of its output is refused.
- duplicates: the same rule reachable from one position through a run of
  items that may match nothing, once per item (`a a a ...` above): a token
  matching `a` is then tried against every copy, and again for each of its
  characters.  At most MAX_DUPLICATES per position.
- work per call: whenever llama.cpp tests candidate tokens (however few) or
  accepts one, it advances every open stack past its next character and
  de-duplicates the stacks that this makes with a linear search.  `work`
  (open stacks x the square of the most stacks one advance makes) bounds
  what one call costs; it is the number that made the grammar above hold
  the engine for minutes (4,001 x 4,000^2).
"""
from __future__ import annotations

from dataclasses import dataclass

from runtime.core.gbnf import Grammar, GrammarError, Item

# Parse stacks open at once.
MAX_STACKS = 1024
# Stack comparisons one call into llama.cpp's grammar may make: a few
# milliseconds, the grain of the engine's grammar work.
MAX_WORK = 1 << 21
# How often one rule (or literal) may recur among the stacks one position
# opens: `a a a a ...` with `a` nullable opens `a`'s stacks once per copy,
# and llama.cpp then tries a token that starts like `a` against every copy,
# recursively for each of its characters (exponential in the token's length
# once the copies are many).
MAX_DUPLICATES = 4
# Grammar elements after llama.cpp expands repetitions (8 bytes each, plus a
# vector per generated rule).
MAX_ELEMENTS = 1 << 19
_CAP = 1 << 40  # stack counts saturate here (nested nullable rules multiply)
_MAX_REACH = 4096  # names one position may open before it counts as too many


@dataclass(frozen=True)
class Cost:
    elements: int   # after repetitions are expanded
    stacks: int     # open at once, at most
    work: int       # stack comparisons one test or accept can make, at most
    where: str      # where the most stacks open
    duplicates: int  # most copies of one rule among the stacks one position opens
    duplicated: str  # which, and where


def cost(g: Grammar) -> Cost:
    """GrammarError for left recursion or stacks that grow without bound."""
    return _Cost(g).run()


def _count(item: Item) -> int:
    """How many copies of the symbol llama.cpp's expansion lays out."""
    return item.hi if item.hi is not None else item.lo + 1


class _Cost:
    """Nullable rules, stacks from each rule's start (`first`), and the
    stacks a rule's callers add once it ends (`after`): all linear in the
    grammar's size, without recursion."""

    def __init__(self, g: Grammar) -> None:
        self.g = g
        self.nullable: dict[str, bool] = dict.fromkeys(g.rules, False)
        self.first: dict[str, int] = {}
        # What a rule's start opens, by rule name or literal text, with how
        # many copies of each (through nested rules too).
        self.reach: dict[str, dict[str, int]] = {}

    def where(self, rule: str) -> str:
        return self.g.labels.get(rule, f"rule {rule!r}")

    def atom_nullable(self, it: Item) -> bool:
        return it.kind == "e" or (it.kind == "r" and self.nullable[it.name])

    def item_nullable(self, it: Item) -> bool:
        return it.lo == 0 or it.hi == 0 or self.atom_nullable(it)

    def item_first(self, it: Item) -> int:
        """Stacks a repeated symbol opens before its first character: each
        copy's when the symbol may be empty, else the first copy's."""
        t = 1 if it.kind == "t" else 0 if it.kind == "e" else self.first[it.name]
        n = _count(it)
        return min(_CAP, t * (n if self.atom_nullable(it) else min(n, 1)))

    def find_nullable(self) -> None:
        waiting: dict[str, list[int]] = {}
        pending: list[int] = []
        owner: list[str] = []
        queue: list[str] = []
        for name, alts in self.g.rules.items():
            for alt in alts:
                n = 0
                for it in alt:
                    if it.lo == 0 or it.hi == 0 or it.kind == "e":
                        continue
                    if it.kind == "t":
                        n = -1
                        break
                    waiting.setdefault(it.name, []).append(len(pending))
                    n += 1
                pending.append(n)
                owner.append(name)
                if n == 0 and not self.nullable[name]:
                    self.nullable[name] = True
                    queue.append(name)
        while queue:
            for k in waiting.get(queue.pop(), ()):
                if pending[k] > 0:
                    pending[k] -= 1
                    if pending[k] == 0 and not self.nullable[owner[k]]:
                        self.nullable[owner[k]] = True
                        queue.append(owner[k])

    def leading(self, name: str) -> list[str]:
        """Rules reachable from the start of `name` before any character."""
        out = []
        for alt in self.g.rules[name]:
            for it in alt:
                if it.kind == "r":
                    out.append(it.name)
                if not self.item_nullable(it):
                    break
        return out

    def find_first(self) -> None:
        state: dict[str, int] = {}  # 1 on the DFS path, 2 done
        for start in self.g.rules:
            if start in state:
                continue
            stack = [(start, iter(self.leading(start)))]
            state[start] = 1
            while stack:
                name, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    state[name] = 2
                    total = 0
                    for alt in self.g.rules[name]:
                        total += self.suffix_first(alt, 0)[0]
                    self.first[name] = min(total, _CAP)
                    self.reach[name] = self.run_counts(
                        [it for alt in self.g.rules[name] for it in self.leading_run(alt)])
                elif state.get(dep) == 1:
                    raise GrammarError(None, f"{self.where(dep)} is left-recursive: it can "
                                             "reach itself before any character (llama.cpp "
                                             "refuses it)")
                elif dep not in state:
                    state[dep] = 1
                    stack.append((dep, iter(self.leading(dep))))

    def suffix_first(self, alt: list[Item], i: int) -> tuple[int, bool]:
        """Stacks opened from position i of a sequence, and whether the
        rest may be empty."""
        total = 0
        for it in alt[i:]:
            total += self.item_first(it)
            if not self.item_nullable(it):
                return min(total, _CAP), False
        return min(total, _CAP), True

    def suffixes(self, alt: list[Item]) -> list[tuple[int, bool]]:
        """suffix_first for every position of a sequence, in one pass."""
        out = [(0, True)] * (len(alt) + 1)
        for i in range(len(alt) - 1, -1, -1):
            it = alt[i]
            t, null = out[i + 1]
            if self.item_nullable(it):
                out[i] = (min(_CAP, self.item_first(it) + t), null)
            else:
                out[i] = (self.item_first(it), False)
        return out

    def continuation(self, it: Item, rest: tuple[int, bool]) -> tuple[int, bool]:
        """What follows one copy of `it`: its remaining copies, then the
        rest of the sequence."""
        more = _count(it) > 1 or it.hi is None
        copies_t = self.item_first(it) if more else 0
        copies_null = it.lo <= 1 or self.atom_nullable(it)
        t, null = rest
        return min(_CAP, copies_t + (t if copies_null else 0)), copies_null and null

    def leading_run(self, alt: list[Item]) -> list[Item]:
        out = []
        for it in alt:
            out.append(it)
            if not self.item_nullable(it):
                break
        return out

    def run_counts(self, items: list[Item]) -> dict[str, int]:
        """Copies of each rule or literal that a run of items opens at once
        (saturating past MAX_DUPLICATES, and past _MAX_REACH names)."""
        counts: dict[str, int] = {}
        for it in items:
            if it.kind == "e":
                continue
            copies = _count(it) if self.atom_nullable(it) else min(_count(it), 1)
            if copies == 0:
                continue
            key = it.name if it.kind == "r" else f"terminal {it.sig}"
            inner = {key: 1}
            if it.kind == "r":
                inner.update(self.reach.get(it.name, {}))
            for k, n in inner.items():
                counts[k] = min(counts.get(k, 0) + n * copies, MAX_DUPLICATES + 1)
            if len(counts) > _MAX_REACH:
                counts = {"(too many rules)": MAX_DUPLICATES + 1}
        return counts

    def duplicates(self) -> tuple[int, str]:
        """The most copies of one rule or literal that one position opens:
        each run of items that may match nothing, up to and including the
        item that ends it, counted through the rules it enters."""
        worst, where = 0, ""
        for name, alts in self.g.rules.items():
            for alt in alts:
                start = 0
                for i, it in enumerate(alt):
                    if self.item_nullable(it) and i < len(alt) - 1:
                        continue
                    for key, n in self.run_counts(alt[start:i + 1]).items():
                        if n > worst:
                            what = self.where(key) if key in self.g.rules else (
                                "a literal" if key.startswith("terminal") else key)
                            worst, where = n, f"{what} in {self.where(name)}"
                    start = i + 1
        return worst, where

    def run(self) -> Cost:
        self.find_nullable()
        self.find_first()
        duplicates, duplicated = self.duplicates()
        elements = 0
        base: dict[str, int] = dict.fromkeys(self.g.rules, 0)
        base["root"] = 1  # the empty stack: the end of generation
        edges: dict[str, list[tuple[str, int]]] = {n: [] for n in self.g.rules}
        ends: list[tuple[str, int, bool]] = []  # after each terminal
        for name, alts in self.g.rules.items():
            elements += 1
            for alt in alts:
                elements += 1
                suffix = self.suffixes(alt)
                for i, it in enumerate(alt):
                    n_opt = 0 if it.hi is not None and it.hi <= it.lo else (
                        1 if it.hi is None else it.hi - it.lo)
                    elements += it.lo * it.size + n_opt * (it.size + 3) + (1 if n_opt else 0)
                    if it.kind == "e":
                        continue
                    t, null = self.continuation(it, suffix[i + 1])
                    if it.kind == "t":
                        ends.append((name, t, null))
                    elif null:
                        edges[name].append((it.name, t))
                    else:
                        base[it.name] = max(base[it.name], t)
        after = self.after(base, edges)
        stacks = self.first["root"] + (1 if self.nullable["root"] else 0)
        worst = "the start of rule 'root'"
        advance = 1
        for name, t, null in ends:
            n = t + (after[name] if null else 0)
            advance = max(advance, n)
            if n > stacks:
                stacks, worst = n, self.where(name)
        work = min(_CAP, stacks * advance * advance)
        return Cost(elements, stacks, work, worst, duplicates, duplicated)

    def after(self, base: dict[str, int], edges: dict[str, list[tuple[str, int]]]
              ) -> dict[str, int]:
        """Stacks the callers of each rule add once it ends: a longest path
        over caller -> callee edges.  Inside a cycle of callers every edge
        must add nothing, or the stacks grow with each level of nesting."""
        sccs = _components(edges)
        comp = {n: k for k, members in enumerate(sccs) for n in members}
        value = dict(base)
        for members in reversed(sccs):  # callers before callees
            k = comp[members[0]]
            top = max(value[n] for n in members)
            for n in members:
                value[n] = top
            for n in members:
                for callee, w in edges[n]:
                    if comp[callee] == k:
                        if w > 0:
                            raise GrammarError(
                                None, f"{self.where(callee)} can nest without bound with an "
                                "optional part after it, so its parse stacks grow with every "
                                "level; make what follows the recursion required")
                    else:
                        value[callee] = max(value[callee], min(_CAP, top + w))
        return value


def _components(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, without recursion), callees
    before their callers."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    path: list[str] = []
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        path.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                callee = nxt[0]
                if callee not in index:
                    index[callee] = low[callee] = len(index)
                    path.append(callee)
                    on.add(callee)
                    work.append((callee, iter(edges[callee])))
                elif callee in on:
                    low[node] = min(low[node], index[callee])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    m = path.pop()
                    on.discard(m)
                    members.append(m)
                    if m == node:
                        break
                out.append(members)
    return out
