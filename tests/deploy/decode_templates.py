"""Prints CloudFormation templates as one JSON object {path: template}, read with cfn-lint's own
decoder (which understands the short forms such as !Sub and !GetAtt that plain YAML loaders
reject). Used by tests/deploy.rs; run with the project's .venv/bin/python."""

import json
import sys

from cfnlint.decode import decode

templates = {}
for path in sys.argv[1:]:
    template, problems = decode(path)
    if problems or template is None:
        sys.exit(f"{path}: cannot decode: {problems}")
    templates[path] = template
json.dump(templates, sys.stdout)
