"""`kvmkit tune vm`: judge one VM's libvirt definition against a goal, and fix it with a journal.

Words and modules:
  domain.py    DomainModel — the parsed definition (pure: XML text in, frozen dataclasses out)
  host.py      HostFacts — what the judging needs to know of the host (CPUs, NUMA nodes, hugepages, vhost-net)
  edits.py     XmlEdit — one change to the definition, applied to XML text (pure), shown as before/after XML
  rules.py     the checks: DomainModel + HostFacts + goal → VmFinding (why, source, fix, orchestrator knobs)
  owners.py    who owns a VM (CloudStack, Nova, nobody) from its name and metadata
  edge.py      the libvirt edge: read definitions and host facts through kvmkit.virt; define; journal
  cli.py       `kvmkit tune vm …`, mounted by tune/cli.py
"""
