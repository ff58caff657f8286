#!/usr/bin/env python3
"""Transforms template.yaml with AWS's own SAM translator, offline.

Prints {"template": <the SAM template>, "transformed": <CloudFormation>} as
JSON, so tests can lint the CloudFormation that `sam deploy` would create and
check what it grants. Like `sam package`, it first points CodeUri at S3.

    pip install aws-sam-translator cfn-lint
    python3 tests/sam/transform.py template.yaml
"""

import json
import os
import sys

try:
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform
except ImportError as e:
    sys.exit(f"{e.name} is missing: pip install aws-sam-translator==1.115.0 cfn-lint==1.58.0")


class NoManagedPolicies:
    """The template names managed policies by ARN only; nothing to look up."""

    def load(self):
        return {}


def main(path: str) -> None:
    template, errors = decode(path)
    if errors:
        sys.exit("\n".join(str(e) for e in errors))
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    packaged = json.loads(json.dumps(template))
    for resource in packaged.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://sandstorm-artifacts/bootstrap.zip"
    transformed = transform(packaged, {}, NoManagedPolicies())
    json.dump({"template": template, "transformed": transformed}, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml")
