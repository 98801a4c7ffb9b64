"""What every stage shares: configuration and settings, the sample sheet, records and job logs,
atomic writes, voxel order and geometry, folds and map sampling, CT pictures, the torch device.

Core imports no stage.
"""
