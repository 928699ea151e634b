"""Which delivery a guest can choose, by store variant (storefronts.oscar.VARIANTS).

"default": Oscar's own default, free shipping only, so Oscar skips its shipping-method page.
"shipping_choice": standard (free) or express (paid) delivery, so every buyer meets Oscar's
shipping-method page, one more checkout step: the variant an A/B compares against the default.
"""

from decimal import Decimal

from django.conf import settings
from oscar.apps.shipping import methods, repository


class Express(methods.FixedPrice):
    code = "express"
    name = "Express delivery (next day)"


class Repository(repository.Repository):
    def get_available_shipping_methods(self, basket, shipping_addr=None, **kwargs):
        if settings.SIMPERSONA_OSCAR_VARIANT == "shipping_choice":
            return [methods.Free(), Express(Decimal("9.90"), Decimal("9.90"))]
        return super().get_available_shipping_methods(basket, shipping_addr, **kwargs)
