"""`python -m client`: not built yet; says so instead of failing obscurely."""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "chatbooth: the chat client is not built yet (see README.md, 'What works so far').",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
