"""Tables and output in one place: data on stdout, messages on stderr."""

import sys

_JUSTIFY = {"l": str.ljust, "r": str.rjust, "c": str.center}


def table(headers, rows, align="l"):
    """A table drawn exactly as PrettyTable's default style draws it.

    Drawn here rather than by PrettyTable because a command is a short-lived process: importing
    prettytable and its wcwidth costs ~12 ms, a tenth of a `calicoctl pool show`.  Cells are
    str()-ed, None shows empty, a cell with newlines spans several lines (top-aligned); widths
    count characters, which is right for the ASCII we print (names, ids, addresses).
    """
    justify = _JUSTIFY[align]
    cells = [[str(h) for h in headers]]
    cells += [["" if c is None else str(c) for c in row] for row in rows]
    split = [[c.split("\n") for c in row] for row in cells]
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(headers))]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def draw(row):
        height = max(len(lines) for lines in row)
        return ["|" + "|".join(" %s " % justify(lines[n] if n < len(lines) else "", w)
                               for lines, w in zip(row, widths)) + "|"
                for n in range(height)]
    lines = [border] + draw(split[0]) + [border]
    for row in split[1:]:
        lines += draw(row)
    lines.append(border)
    return "\n".join(lines)


def out(text=""):
    sys.stdout.write("%s\n" % text)


def msg(text):
    sys.stderr.write("%s\n" % text)
