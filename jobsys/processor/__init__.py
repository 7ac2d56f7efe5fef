"""The processor (`jobsys process`): see jobsys.processor.processor for how it is composed."""

from jobsys.processor.processor import Pool, Processor, ProcessorStats, main

__all__ = ["Pool", "Processor", "ProcessorStats", "main"]
