"""The read model's indicative opening takes the engine's reference: the last trade price
only while it lies in the band. A hand-made book: a trade at 120, then a re-band to
95..105 and a pre-open with a buy of 10 at 101 and a sell of 10 at 99. Both prices give
volume 10 and imbalance 0; without a reference the lower one, 99, opens (with the old
rule the read model took 120 as the reference and said 101)."""

from __future__ import annotations

from brokercore import OrderBook
from brokercore.engine.records import Side, Tif
from brokercore.read.candles import indicative

LEVELS = [("BUY", 101, 10), ("SELL", 99, 10)]


def test_a_last_price_outside_the_band_is_no_reference_as_in_the_engine():
    book = OrderBook(1, 200, 1, 1)  # ticks = paise here
    book.limit(1, Side.SELL, 120, 1, account=1, tif=Tif.DAY)
    book.limit(2, Side.BUY, 120, 1, account=2, tif=Tif.DAY)
    assert book.last_price == 120
    book.close()
    book.reband(95, 105)
    book.pre_open()
    book.limit(3, Side.BUY, 101, 10, account=2, tif=Tif.DAY)
    book.limit(4, Side.SELL, 99, 10, account=1, tif=Tif.DAY)
    engine = book.auction()
    assert engine is not None and engine.price == 99

    quote = indicative(LEVELS, book.last_price, (95, 105))
    assert quote is not None
    assert (quote.price, quote.volume, quote.imbalance) == ("0.99", 10, 0)


def test_a_last_price_in_the_band_is_the_reference():
    book = OrderBook(1, 200, 1, 1)
    book.limit(1, Side.SELL, 100, 1, account=1, tif=Tif.DAY)
    book.limit(2, Side.BUY, 100, 1, account=2, tif=Tif.DAY)
    book.close()
    book.pre_open()
    book.limit(3, Side.BUY, 101, 10, account=2, tif=Tif.DAY)
    book.limit(4, Side.SELL, 99, 10, account=1, tif=Tif.DAY)
    engine = book.auction()
    assert engine is not None and engine.price == 100  # the reference itself

    quote = indicative(LEVELS, 100, (1, 200))
    assert quote is not None and quote.price == "1.00"
    assert indicative(LEVELS, None, (1, 200)) == indicative(LEVELS, 0, (1, 200))
