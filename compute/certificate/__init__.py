"""Batch certificates: an HTML page (chart embedded) and a product carbon label with a QR
code carrying the footprint id and its evidence bundle's root hash."""
