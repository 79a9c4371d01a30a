"""Tables and output in one place: data on stdout, messages on stderr."""

import sys


def table(headers, rows, align="l"):
    from prettytable import PrettyTable  # deferred: only commands that print tables pay for it
    t = PrettyTable(headers)
    t.align = align
    for row in rows:
        t.add_row(["" if c is None else c for c in row])
    return t.get_string()


def out(text=""):
    sys.stdout.write("%s\n" % text)


def msg(text):
    sys.stderr.write("%s\n" % text)
