"""Options every client command shares."""

from __future__ import annotations

import click

redis_option = click.option(
    "--redis",
    "redis_url",
    envvar="HOSTLER_REDIS_URL",
    default=None,
    help="Redis URL (redis://, rediss://, with password; redis+sentinel://host:26379,.../service-name "
    "behind Sentinels). Default: $HOSTLER_REDIS_URL or localhost. "
    "Give a password through $HOSTLER_REDIS_URL: every user of the machine can read command lines.",
)
timeout_option = click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
