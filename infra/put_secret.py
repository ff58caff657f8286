#!/usr/bin/env python3
"""Creates or updates the Sandstorm secret in AWS Secrets Manager.

The values come from your environment, never from the command line (where
other users of the machine could read them):

    ANTHROPIC_API_KEY, E2B_API_KEY, OPENROUTER_API_KEY, SANDSTORM_API_TOKEN,
    SANDSTORM_API_TOKEN_PREVIOUS, SANDSTORM_E2B_WEBHOOK_SECRET

Only the ones that are set are stored; the secret's shape is
infra/secret-shape.json. With --generate-token and no SANDSTORM_API_TOKEN, a
random token is stored (read it back with `aws secretsmanager
get-secret-value`). Prints the secret's ARN, which is what the SAM
template's SecretArn parameter and SANDSTORM_SECRET_ID take.

    pip install boto3
    export ANTHROPIC_API_KEY=... E2B_API_KEY=...
    python3 infra/put_secret.py --name sandstorm --generate-token

Region and credentials are boto3's usual ones (AWS_REGION, AWS_PROFILE, ...).
"""

import argparse
import json
import os
import secrets
import sys

KEYS = (
    "ANTHROPIC_API_KEY",
    "E2B_API_KEY",
    "OPENROUTER_API_KEY",
    "SANDSTORM_API_TOKEN",
    "SANDSTORM_API_TOKEN_PREVIOUS",
    "SANDSTORM_E2B_WEBHOOK_SECRET",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sandstorm", help="secret name (default: sandstorm)")
    parser.add_argument(
        "--generate-token",
        action="store_true",
        help="store a random SANDSTORM_API_TOKEN when none is set",
    )
    args = parser.parse_args()

    try:
        import boto3
    except ImportError:
        print("put_secret.py needs boto3: pip install boto3", file=sys.stderr)
        return 1

    values = {k: os.environ[k] for k in KEYS if os.environ.get(k)}
    if "SANDSTORM_API_TOKEN" not in values and args.generate_token:
        values["SANDSTORM_API_TOKEN"] = secrets.token_urlsafe(32)
    if not values:
        print(f"none of {', '.join(KEYS)} is set; nothing to store", file=sys.stderr)
        return 1

    client = boto3.client("secretsmanager")
    body = json.dumps(values)
    try:
        arn = client.create_secret(Name=args.name, SecretString=body)["ARN"]
        action = "created"
    except client.exceptions.ResourceExistsException:
        arn = client.put_secret_value(SecretId=args.name, SecretString=body)["ARN"]
        action = "updated"
    print(f"{action} secret {args.name} with {', '.join(sorted(values))}", file=sys.stderr)
    print(arn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
