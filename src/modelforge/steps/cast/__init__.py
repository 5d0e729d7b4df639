"""Steps that change the dtype of a checkpoint's weights (cast_weights), with torch's own
conversions, one tensor at a time."""
