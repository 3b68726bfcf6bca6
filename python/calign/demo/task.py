"""The demo's task: two-number addition, checkable by a program.

A prompt is "a+b=" (a, b < 100), the answer its decimal sum. A rejected answer
is a plausible mistake: a carry dropped or added, a digit off by one, digits
swapped. Exact match of the greedy answer on a held-out split measures quality
(calign.demo.run.held_out_accuracy).
"""

CHARACTERS = list("0123456789+=")
SPECIAL = ["<pad>", "<eos>"]


def answer(a, b):
    return str(a + b)


def plausible_wrong(a, b, rng):
    """A wrong answer of the kind a model makes: never the right one."""
    right = a + b
    for _ in range(20):
        kind = rng.integers(4)
        if kind == 0:      # a carry dropped or added
            wrong = right + rng.choice([-10, 10])
        elif kind == 1:    # the last digit off by one
            wrong = right + rng.choice([-1, 1])
        elif kind == 2:    # digits swapped
            text = str(right)
            wrong = int(text[::-1]) if len(text) > 1 else right + 1
        else:              # the tens digit off by one
            wrong = right + rng.choice([-10, 10]) + rng.choice([-1, 0, 1])
        if wrong != right and wrong >= 0:
            return str(wrong)
    return str(right + 1)


def problems(n, rng, exclude=()):
    """n distinct (a, b) pairs not in `exclude`."""
    seen, out = set(exclude), []
    while len(out) < n:
        a, b = (int(x) for x in rng.integers(0, 100, 2))
        if (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def prompt_of(a, b):
    return f"{a}+{b}="


def exact_match(prompts, completions, answer, **kwargs):
    """The online methods' reward function (TRL's signature): 1 for a
    completion that is exactly the answer (surrounding spaces aside), else 0."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]
