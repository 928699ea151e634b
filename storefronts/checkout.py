"""The checkout steps a variant can string together, as data: each step is a titled list of fields.

A variant's `checkout_steps` names steps from `STEPS` in order; the store renders each as one HTML
form and validates what comes back with `validate_step`. The payment step takes card fields but
this is a test store: any well-formed card number is accepted and nothing is charged. Secret
fields (card number, security code, password) are checked and then dropped, except the card
number's last four digits for the review page, so the order log never holds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FIELD_LENGTH = 200


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"  # text | email | password | select | radio | checkbox | textarea
    required: bool = True
    options: tuple[tuple[str, str], ...] = ()  # (value, label) for select and radio
    autocomplete: str = "off"
    hint: str = ""
    secret: bool = False


@dataclass(frozen=True)
class CheckoutStep:
    name: str
    title: str
    fields: tuple[Field, ...] = ()
    note: str = ""


COUNTRIES = (
    ("DE", "Germany"),
    ("FR", "France"),
    ("NL", "Netherlands"),
    ("ES", "Spain"),
    ("IT", "Italy"),
    ("GB", "United Kingdom"),
    ("US", "United States"),
    ("CN", "China"),
)
DELIVERY_METHODS = (
    ("standard", "Standard delivery, 3 to 5 working days"),
    ("express", "Express delivery, 1 to 2 working days"),
)
HEARD_FROM = (
    ("search", "Search engine"),
    ("social", "Social media"),
    ("friend", "A friend"),
    ("advert", "An advertisement"),
    ("other", "Other"),
)

STEPS: dict[str, CheckoutStep] = {
    step.name: step
    for step in (
        CheckoutStep(
            "account",
            "Your account",
            (
                Field("email", "Email address", "email", autocomplete="email"),
                Field(
                    "password",
                    "Create a password (optional)",
                    "password",
                    required=False,
                    autocomplete="new-password",
                    secret=True,
                ),
            ),
            note="Leave the password empty to check out as a guest.",
        ),
        CheckoutStep(
            "address",
            "Shipping address",
            (
                Field("full_name", "Full name", autocomplete="name"),
                Field("street", "Street and house number", autocomplete="street-address"),
                Field("city", "City", autocomplete="address-level2"),
                Field("postcode", "Postcode", autocomplete="postal-code"),
                Field("country", "Country", "select", options=COUNTRIES, autocomplete="country"),
            ),
        ),
        CheckoutStep(
            "delivery",
            "Delivery",
            (Field("delivery", "Delivery method", "radio", options=DELIVERY_METHODS),),
        ),
        CheckoutStep(
            "gift_options",
            "Gift options",
            (
                Field("gift_wrap", "Wrap my order as a gift", "checkbox", required=False),
                Field("gift_message", "Gift message (optional)", "textarea", required=False),
            ),
        ),
        CheckoutStep(
            "survey",
            "One quick question",
            (
                Field("heard_from", "How did you hear about us?", "select", options=HEARD_FROM),
                Field("newsletter", "Send me the newsletter", "checkbox", required=False),
            ),
        ),
        CheckoutStep(
            "payment",
            "Payment",
            (
                Field("card_name", "Name on card", autocomplete="cc-name"),
                Field("card_number", "Card number", autocomplete="cc-number", secret=True),
                Field("card_expiry", "Expiry date", autocomplete="cc-exp", hint="MM/YY"),
                Field("card_cvc", "Security code", autocomplete="cc-csc", hint="3 or 4 digits", secret=True),
            ),
            note="This is a test store: any card number is accepted and nothing is charged.",
        ),
        CheckoutStep("review", "Review your order"),
    )
}
# A one-page checkout asks everything of the account, address, delivery and payment steps at once.
STEPS["one_page"] = CheckoutStep(
    "one_page",
    "Checkout",
    tuple(f for name in ("account", "address", "delivery", "payment") for f in STEPS[name].fields
          if f.name != "password"),
    note=STEPS["payment"].note,
)


# A signed-in returning customer's saved answers (variant `saved_details`): the address and payment
# steps open filled in, as on marketplaces where buyers check out with a stored address and wallet.
# Test values only; any well-formed card number is accepted and nothing is charged.
SAVED_CUSTOMER: dict[str, str] = {
    "email": "returning.buyer@example.com",
    "full_name": "Returning Buyer",
    "street": "1 Saved Street",
    "city": "Savedville",
    "postcode": "10115",
    "country": "DE",
    "delivery": "standard",
    "heard_from": "other",
    "card_name": "Returning Buyer",
    "card_number": "4242424242424242",
    "card_expiry": "12/30",
    "card_cvc": "123",
}


def saved_answers(step: CheckoutStep) -> dict[str, str]:
    """The saved customer's values for this step's fields (secret ones included: they are the
    customer's stored wallet, shown filled in; the order log still never keeps them)."""
    return {f.name: SAVED_CUSTOMER[f.name] for f in step.fields if f.name in SAVED_CUSTOMER}


def _check_email(value: str) -> str | None:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        return "Enter an email address such as name@example.com."
    return None


def _check_card_number(value: str) -> str | None:
    digits = re.sub(r"[\s-]", "", value)
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        return "Enter a card number of 12 to 19 digits (any test number is accepted)."
    return None


def _check_expiry(value: str) -> str | None:
    match = re.fullmatch(r"(\d{2})\s*/\s*(\d{2})", value)
    if not match or not 1 <= int(match.group(1)) <= 12:
        return "Enter the expiry date as MM/YY, for example 12/29."
    return None


def _check_cvc(value: str) -> str | None:
    if not re.fullmatch(r"\d{3,4}", value):
        return "Enter the 3 or 4 digit security code."
    return None


FIELD_CHECKS = {
    "email": _check_email,
    "card_number": _check_card_number,
    "card_expiry": _check_expiry,
    "card_cvc": _check_cvc,
}


def validate_step(step: CheckoutStep, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Check a submitted step form. Returns (values to keep, errors by field name).

    Secret values are dropped once they pass, except the card number's last digits ("ending 4242").
    """
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for field in step.fields:
        raw = form.get(field.name, "").strip()
        if field.kind == "checkbox":
            values[field.name] = "yes" if raw else "no"
            continue
        if not raw:
            if field.required:
                errors[field.name] = f"{field.label} is required."
            continue
        error = _check_value(field, raw)
        if error:
            errors[field.name] = error
        elif not field.secret:
            values[field.name] = raw
        elif field.name == "card_number":
            values[field.name] = "ending " + re.sub(r"\D", "", raw)[-4:]
    return values, errors


def _check_value(field: Field, raw: str) -> str | None:
    if len(raw) > MAX_FIELD_LENGTH:
        return f"{field.label} must be at most {MAX_FIELD_LENGTH} characters."
    if field.options and raw not in {value for value, _ in field.options}:
        return f"Choose one of the offered options for {field.label.lower()}."
    check = FIELD_CHECKS.get(field.name)
    return check(raw) if check else None


def option_label(step_name: str, field_name: str, value: str) -> str:
    """The human label of a chosen select/radio value, for the review page."""
    for field in STEPS[step_name].fields:
        if field.name == field_name:
            return dict(field.options).get(value, value)
    return value
