"""Our one addition to Oscar: each order remembers which synthetic buyer placed it.

Every request of a synthetic buyer carries the header X-SimPersona-Buyer (storefronts.BUYER_HEADER).
When Oscar places an order it sends its `post_checkout` signal; we attach the header's value to
the order as an OrderNote, one of Oscar's own tables, so counting orders per buyer reads only
Oscar's database (storefronts/oscar/orders.py).
"""

from django.apps import AppConfig

from storefronts import BUYER_HEADER

from storefronts.oscar.orders import BUYER_NOTE_TYPE


def note_buyer(sender, order, request=None, **kwargs):
    from oscar.apps.order.models import OrderNote

    tag = request.headers.get(BUYER_HEADER) if request is not None else None
    if tag:
        OrderNote.objects.create(order=order, note_type=BUYER_NOTE_TYPE, message=tag)


class BuyerTagConfig(AppConfig):
    name = "storefronts.oscar"
    label = "simpersona_buyers"

    def ready(self):
        from oscar.apps.checkout.signals import post_checkout

        post_checkout.connect(note_buyer, dispatch_uid="simpersona-buyer-note")
