"""Secrets of the review app: Argon2id password hashes, API tokens and browser session ids.

Passwords get a slow, salted KDF (Argon2id, RFC 9106 parameters as argon2-cffi sets them).
Tokens and session ids are 256-bit random values, so a plain SHA-256 of them is enough to
store: the database never holds anything that logs a user in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
TOKEN_PREFIX = "a2c_"
MIN_PASSWORD_CHARS = 8
# The most common passwords of at least MIN_PASSWORD_CHARS characters (public breach lists),
# compared in lower case: the first ones a password-guessing attacker tries.
_COMMON = """
    password password1 password12 password123 password1234 password! passw0rd passw0rd1
    p@ssw0rd p@ssword p@ssw0rd1 pa$$word 12345678 123456789 1234567890 12345678910 87654321
    987654321 0987654321 11111111 00000000 88888888 12341234 11223344 123123123 147258369
    1234567a 12345qwert 123456abc abc12345 abc123456 abcd1234 a1b2c3d4 aa123456 1q2w3e4r
    1q2w3e4r5t 1qaz2wsx zaq12wsx zaq1zaq1 qazwsxedc qweasdzxc q1w2e3r4 q1w2e3r4t5 qwerty12
    qwerty123 qwerty1234 qwertyui qwertyuiop qwer1234 1234qwer asdfghjkl asdfasdf asdf1234
    zxcvbnm1 iloveyou iloveyou1 sunshine sunshine1 princess princess1 football football1
    baseball baseball1 welcome1 welcome123 superman trustno1 letmein1 letmein123 admin123
    admin1234 administrator changeme changeme1 changeme123 computer internet starwars
    whatever michelle jennifer liverpool chelsea1 arsenal1 jordan23 monkey123 secret123
    test1234 testtest guest123 user1234 login123 hello123 master123 dragon123 shadow123
    football123 default1 password01 qwerty01 any2capins any2caption any2cap123 review123
    annotator reviewer
"""
COMMON_PASSWORDS = frozenset(_COMMON.split())


@cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a login takes as long either way."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"passwords have at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def check_new_password(password: str, name: str) -> None:
    """Refuse a new password for user ``name`` that attackers guess first (ValueError)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"passwords have at least {MIN_PASSWORD_CHARS} characters")
    folded = password.strip().casefold()
    if folded == name.strip().casefold():
        raise ValueError("the password must not be the user name")
    if folded in COMMON_PASSWORDS:
        raise ValueError(
            "this is one of the most common passwords, the first ones attackers try: "
            "choose another (a few unrelated words make a good one)"
        )


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )
