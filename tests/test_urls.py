"""mask_url: every credential of a database URL masked, on any text."""

from __future__ import annotations

import pytest

from flowd.urls import mask_url, scrub, secrets_of


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///var/lib/flowd/flowd.db", "sqlite:///var/lib/flowd/flowd.db"),
        ("postgresql+psycopg://u:pw@db:5432/flowd", "postgresql+psycopg://u:***@db:5432/flowd"),
        (
            "postgresql+psycopg://u@db/flowd?password=pw&sslmode=require",
            "postgresql+psycopg://u@db/flowd?password=***&sslmode=require",
        ),
        ("postgresql://u:a?b/c@db/flowd?x=1", "postgresql://u:***@db/flowd?x=1"),  # '?' inside the password
        ("mysql+pymysql://root@h/db?PASSWD=pw;ssl_key=/k.pem", "mysql+pymysql://root@h/db?PASSWD=***;ssl_key=/k.pem"),
        (
            "postgresql://h/db?sslpassword=a&pwd=b&api_key=c&access_token=d&secret=e",
            "postgresql://h/db?sslpassword=***&pwd=***&api_key=***&access_token=***&secret=***",
        ),
        ("postgresql://u:@h/db", "postgresql://u:@h/db"),
        ("not a url?password=pw", "not a url?password=***"),
    ],
)
def test_mask_url__hides_the_password_and_secret_query_values(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_scrub__removes_raw_and_decoded_secrets_from_a_message() -> None:
    url = "postgresql://u:p%40ss@h/db?token=t0k"
    assert set(secrets_of(url)) == {"p%40ss", "p@ss", "t0k"}
    assert scrub("auth failed for p@ss (token t0k)", url) == "auth failed for *** (token ***)"
