"""Scrapes URL and parses it with PyPI prometheus_client's text parser, as a Prometheus
client library reads an exposition; prints every family as JSON: its name (counters
without `_total`, as the parser names them), type (`unknown` without a TYPE line),
help (empty without a HELP line) and samples. A text the parser refuses fails the run.

Usage: prometheus_text.py URL
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
        text = answer.read().decode("utf-8")
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": s.value}
                for s in family.samples
            ],
        }
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
