"""GET /health: is the server up, and which version is it?"""

import os

import httpx

url = os.environ.get("SANDSTORM_URL", "http://localhost:8000")
response = httpx.get(f"{url}/health")
response.raise_for_status()
health = response.json()
print(health["status"], health["version"])
