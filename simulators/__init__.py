"""A simulated plant: Modbus TCP meters, an OPC UA server for PLCs and the MES,
fault injection and a ground-truth file of the true energy per batch.

It imports nothing from ``edge``, ``ingest`` or ``compute``: it is the
independent peer that catches their decoding and allocation bugs.
"""
