"""Facts the detector adds to a flow: country/AS of the peer, registrable domain, local process, binary hash.

Each module does one lookup, keeps a bounded cache and never raises for bad input: enrichment
is best effort and must not stop the detector.
"""
