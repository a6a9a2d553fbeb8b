"""Pure DataFrame -> DataFrame transforms: no I/O, no clock, no DeltaTable, no readStream."""
