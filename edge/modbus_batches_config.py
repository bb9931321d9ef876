"""``[[modbus_batches]]`` config: a PLC's batch registers (``edge.modbus_batches`` reads them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge.registers import DataType, WordOrder, is_float
from edge.settings import Frozen


class RegisterRef(Frozen):
    """A value in holding or input registers (0-based address, as on the wire)."""

    address: Annotated[int, Field(ge=0, le=65535)]
    table: Literal["holding", "input"] = "holding"
    type: DataType = "uint16"
    word_order: WordOrder = "ABCD"
    scale: float = 1.0


class BitRef(Frozen):
    """A running bit: a coil, a discrete input, or bit ``bit`` (0 = least significant)
    of a holding or input register."""

    address: Annotated[int, Field(ge=0, le=65535)]
    table: Literal["coil", "discrete", "holding", "input"] = "coil"
    bit: Annotated[int, Field(ge=0, le=15)] = 0


class PlcBatches(Frozen):
    """``[[modbus_batches]]``: one asset's batch registers on one PLC."""

    asset: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    batch_number: RegisterRef
    # how a number becomes the batch id; {number} and {asset} are available
    batch_id_format: str = "{number}"
    running: BitRef | None = None
    product_code: RegisterRef | None = None
    # code (as text: TOML keys are strings) -> product
    products: dict[str, str] = Field(default_factory=dict)
    quantity: RegisterRef | None = None
    unit: str | None = None
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_delay_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_delay_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("batch_number", "product_code")
    @classmethod
    def _integer(cls, ref: RegisterRef | None) -> RegisterRef | None:
        if ref is not None and (is_float(ref.type) or ref.scale != 1.0):
            raise ValueError(f"{ref.type} with scale {ref.scale}: a batch number or product "
                             "code is an integer register at scale 1")
        return ref

    @model_validator(mode="after")
    def _check(self) -> PlcBatches:
        try:
            self.batch_id_format.format(number=1, asset=self.asset)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"batch_id_format {self.batch_id_format!r}: {exc!r}; use "
                             "{number} and {asset}, e.g. 'K-{number:05d}'") from exc
        if self.products and self.product_code is None:
            raise ValueError("products needs a product_code register")
        if self.reconnect_delay_max_s < self.reconnect_delay_s:
            raise ValueError("reconnect_delay_max_s must be >= reconnect_delay_s")
        return self

    def batch_id(self, number: int) -> str:
        return "" if number == 0 else self.batch_id_format.format(number=number,
                                                                  asset=self.asset)
