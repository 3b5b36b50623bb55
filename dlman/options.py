"""Parsing and validating the options shared by the API, the CLI and manifests.

One place decides what a valid rate, header, URL or connection count is, so the
three front doors cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from dlman.errors import InvalidInputError

MIN_CONNECTIONS = 1
MAX_CONNECTIONS = 64

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)(?:i?[bB])?(?:/s)?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e]*$")  # RFC 9110 field-value, ASCII as httpx sends it

Headers = list[tuple[str, str]]
HeadersInput = Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]] | None


def parse_rate(text: str | float | None) -> int | None:
    """Bytes per second from ``"512K"``, ``"2M"``, ``"1.5G"`` (1024 multiples, as curl and aria2)."""
    if text is None:
        return None
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InvalidInputError(f"invalid rate {text!r}: use bytes per second or a string like '2M'")
    if isinstance(text, (int, float)):
        if not 0 < text < 1 << 62:
            raise InvalidInputError(f"rate must be positive, got {text}")
        return max(1, int(text))
    match = _RATE.match(text)
    if not match:
        raise InvalidInputError(f"invalid rate {text!r}: use a number with an optional K, M or G suffix")
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 0 < number < 1 << 62:
        raise InvalidInputError(f"rate {text!r} is out of range")
    value = int(number)
    if value <= 0:
        raise InvalidInputError(f"rate must be positive, got {text!r}")
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a (name, value) pair, refusing what httpx would send wrong."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not _TOKEN.match(name):
        raise InvalidInputError(f"invalid header {mask_header(text)!r}: expected 'Name: value'")
    value = value.strip()
    if "\r" in value or "\n" in value:
        raise InvalidInputError(f"invalid header {name!r}: the value holds a line break")
    if not _FIELD_VALUE.match(value):
        # the value is not repeated: it may be a token pasted with a stray character
        raise InvalidInputError(f"invalid header {name!r}: the value holds a control or non-ASCII character")
    return name, value


def normalise_headers(headers: HeadersInput) -> Headers:
    """Headers as a list of pairs from a mapping, pairs, or ``"Name: value"`` strings."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return [parse_header(f"{k}: {v}") for k, v in headers.items()]
    pairs: Headers = []
    for item in headers:
        if isinstance(item, str):
            pairs.append(parse_header(item))
        else:
            name, value = item
            pairs.append(parse_header(f"{name}: {value}"))
    return pairs


# -- what is secret ----------------------------------------------------------------------------------
# Masking keeps names and replaces values, so a listing still says which URL or header it is.

SECRET_WORDS = ("token", "secret", "passw", "signature", "credential")
"""Any header or parameter whose name says it carries one of these (X-Upload-Token, client_secret)."""

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "apikey",
                             "x-goog-api-key", "ocp-apim-subscription-key", "x-auth-key", "x-auth-email",
                             "x-jfrog-art-api", "private-token", "x-functions-key"})
"""Headers that carry credentials under a name that does not say so (Google, Azure API Management and
Functions, Supabase/Kong, Cloudflare, Artifactory, GitLab): whoever holds the value acts as the user."""

AWS_PRESIGNED = frozenset({"x-amz-signature", "x-amz-credential", "x-amz-security-token",
                           "awsaccesskeyid", "signature"})
"""S3 presigned URLs: SigV4 puts the signature, the access key id and, for temporary credentials, the
session token itself in the query; the older SigV2 uses AWSAccessKeyId and Signature."""

GOOGLE_SIGNED = frozenset({"x-goog-signature", "x-goog-credential", "googleaccessid"})
"""Cloud Storage signed URLs: V4 mirrors AWS under X-Goog-*, V2 uses GoogleAccessId and Signature."""

CLOUDFRONT_SIGNED = frozenset({"signature", "policy", "key-pair-id"})
"""CloudFront signed URLs: a custom Policy is the grant that Signature seals, Key-Pair-Id names the key."""

AZURE_SAS = frozenset({"sig"})
"""Azure shared access signatures: sig is the HMAC (sv, se, sp only describe the grant and stay readable);
other services use sig= for the same purpose."""

BEARER_TOKENS = frozenset({"token", "access_token", "refresh_token", "id_token", "auth", "jwt"})
"""OAuth 2 access tokens in the query (RFC 6750 section 2.3) and the services that take a bearer token or
an auth string as a parameter: whoever holds one acts as the user."""

API_KEYS = frozenset({"key", "api_key", "apikey", "api-key", "x-api-key", "access_key", "accesskey",
                      "subscription-key"})
"""API keys (Google APIs take key=, others api_key or apikey): whoever holds one is billed as its owner."""

PASSWORDS = frozenset({"password", "passwd", "pass", "pwd", "secret", "client_secret"})
"""Passwords and client secrets that some servers accept as parameters."""

CDN_SIGNED = frozenset({"auth_key", "hdnts", "hdnea", "__token__", "md5", "st", "e", "hash", "verify"})
"""Signed CDN URLs: Alibaba Cloud (auth_key), Akamai token auth (hdnts, hdnea, __token__), nginx's
secure_link and similar (md5 or hash with st/e expiry), Tencent (sign, verify): a link that works
for whoever reads it until it expires."""

CREDENTIAL_PARAMETERS = (AWS_PRESIGNED | GOOGLE_SIGNED | CLOUDFRONT_SIGNED | AZURE_SAS | BEARER_TOKENS
                         | API_KEYS | PASSWORDS | CDN_SIGNED)
"""Query (and fragment) parameter names, lower case, whose values are masked wherever a URL is shown."""

MASK = "***"


def _says_secret(name: str) -> bool:
    return any(word in name for word in SECRET_WORDS)


def is_credential_header(name: str) -> bool:
    """Whether a header carries credentials: masked when shown, sent only to its own origin."""
    name = name.strip().lower()
    return name in _SECRET_HEADERS or _says_secret(name)


def is_credential_parameter(name: str) -> bool:
    """Whether a URL parameter's value must not be shown: case-insensitive, percent-encoding decoded."""
    name = unquote(name).strip().lower()
    return name in CREDENTIAL_PARAMETERS or _says_secret(name)


def mask_header(text: str) -> str:
    """A header line safe to print: values of credential-bearing headers become ``***``."""
    name, sep, _value = text.partition(":")
    if not sep:
        return MASK
    if is_credential_header(name):
        return f"{name.strip()}: {MASK}"
    return text


# A parameter starts after the "?", "&" or "#" before its name; its value runs to the next "&" or "#",
# which is how servers split a query (a "?" or "=" inside a value belongs to the value). A name stops at
# a "?" too, which keeps the scan linear; a name that held one is judged by the part after it.
_PARAMETER = re.compile(r"([?&#])([^&#=?]*)=([^&#]+)")


def _mask_parameters(url: str) -> str:
    def mask(match: re.Match[str]) -> str:
        lead, name, _value = match.groups()
        return f"{lead}{name}={MASK}" if is_credential_parameter(name) else match.group()

    starts = [i for i in (url.find("?"), url.find("#")) if i >= 0]
    if not starts:
        return url
    start = min(starts)
    return url[:start] + _PARAMETER.sub(mask, url[start:])


def _mask_userinfo(url: str) -> str:
    """``user:password@`` becomes ``***@``; the authority is taken to end at the first "/" only, so a
    password holding a raw "?" or "#" is still hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://{MASK}@{authority.rsplit('@', 1)[1]}{slash}{path}"


_ROUNDS = 8


def mask_url(url: str) -> str:
    """The URL safe to show: ``user:password@`` and the values of credential parameters become ``***``.

    Masking a value can remove the "/" that ended the authority (a raw "/" in a signature), and masking
    a "userinfo" can lay bare a query: repeat until nothing changes, so masking twice is masking once.
    Real URLs settle in two rounds; text built to need more is masked whole rather than worked through.
    """
    for _ in range(_ROUNDS):
        masked = _mask_userinfo(_mask_parameters(url))
        if masked == url:
            return masked
        url = masked
    return MASK


_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s")  # what str.isspace() calls white space, found in one scan
_CLOSING = ".,:;!?)]}>'\""  # punctuation that ends a sentence or a quotation, not the URL before it


def redact(text: str) -> str:
    """Free text (an error message, a log line) with every URL in it masked as by :func:`mask_url`.

    A URL ends at white space; trailing punctuation (``http://h/f?sig=x: not found``) is left out of it.
    Relative references (``/f?token=x``) are masked too, as a redirect's Location may be one.
    """
    def mask(match: re.Match[str]) -> str:
        word = match.group()
        body = word.rstrip(_CLOSING)
        return mask_url(body) + word[len(body):]

    return _WORD.sub(mask, text)


def storable_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: an undecodable byte of a URL or a file name arrives as a lone
    surrogate, which SQLite, JSON answers and terminals refuse; it is shown as a backslash escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # the bytes the system gave (os.fsdecode's surrogates), undecodable ones as \xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates from elsewhere (an escaped JSON string): \uNNNN
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_path_text(path: str, what: str = "the destination") -> str:
    """``path`` unchanged, or InvalidInputError: the queue stores paths as UTF-8 text, so a name of
    other bytes (lone surrogates) cannot be stored, and a NUL ends a path early in every system call."""
    if "\x00" in path:
        raise InvalidInputError(f"{what} {storable_text(path)!r} holds a NUL character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {storable_text(path)} is not valid UTF-8, and dlman stores paths as "
                                "UTF-8 text: choose a UTF-8 name and directory") from None
    return path


def check_url(url: str) -> str:
    """The URL, if it is an absolute http(s) URL with a host that httpx accepts; else InvalidInputError."""
    problem = _url_problem(url)
    if problem:
        raise InvalidInputError(f"invalid URL {mask_url(url)!r}: {problem}")
    return url.strip()


# The everyday shape of a valid URL (http(s), a plain ASCII host, an optional port, printable ASCII
# only), told in one match; anything else, valid or not, goes through urlsplit and httpx. ASCII
# matching throughout: Unicode case folding would take "httpſ" for "https", and \d Arabic-Indic or
# fullwidth digits for a port. For this shape httpx can only refuse a bad IPv4 address, an "xn--"
# label it cannot decode, or a URL too long.
_PLAIN_URL = re.compile(r"(?i:https?)://([A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?", re.ASCII)
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_LONGEST_URL = 65536  # httpx refuses longer ones


@functools.lru_cache(maxsize=1024)  # a manifest's URLs mostly share a few hosts
def _plain_host(host: str) -> bool:
    """Whether httpx takes this host of a URL of the everyday shape as it is."""
    if host[:4].lower() == "xn--":
        return False
    if _IPV4_STYLE.fullmatch(host):
        import ipaddress
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


@functools.lru_cache(maxsize=256)  # a manifest's URL is checked as it is read, then again by prepare
def _url_problem(url: str) -> str | None:
    text = url.strip()
    plain = _PLAIN_URL.fullmatch(text)
    if plain is None or not (plain.group(2) is None or 0 < int(plain.group(2)) < 65536):
        plain = None
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            parts, port = None, -1
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or not (
                port is None or 0 < port < 65536):
            return "expected http:// or https:// with a host"
        if _SPACE.search(text):
            return "it contains whitespace"
    if _CONTROL_CHARACTER.search(url):
        return "it contains a control character"
    if plain is not None and len(text) <= _LONGEST_URL and _plain_host(plain.group(1)):
        return None
    import httpx  # here, not at the top: the command line starts without it

    try:
        httpx.URL(text).host  # the host is decoded lazily: an IDNA label httpx refuses, say
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        return str(exc)
    return None


def check_urls(urls: str | Sequence[str]) -> list[str]:
    """One URL or several mirrors of the same file, each checked."""
    items = [urls] if isinstance(urls, str) else list(urls)
    if not items:
        raise InvalidInputError("no URL given")
    return [check_url(u) for u in items]


def check_connections(value: int) -> int:
    """A connection count within the 1..64 the SPEC allows."""
    if type(value) is not int or not MIN_CONNECTIONS <= value <= MAX_CONNECTIONS:
        raise InvalidInputError(
            f"connections must be between {MIN_CONNECTIONS} and {MAX_CONNECTIONS}, got {value!r}"
        )
    return value
