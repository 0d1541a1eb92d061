"""Tiers of aggregators (docs/tiers.md): a site's aggregator is one device of an upper tier.

uplink.py      SiteUplink: the device protocol toward the upper tier, fed by the site
site.py        SiteGateway: a site's aggregator and its uplink, run together
federation.py  TieredFederation: a top aggregator and its sites in one process
demo.py        `fedge demo --sites N --devices-per-site M`
"""
