"""The local backend's networking: namespaces, links, CNI attachments, nodes and the underlay.

``netns`` (namespaces: create, delete, enter, run inside), ``rtnetlink`` (links and addresses, in-process),
``cni`` (the plugin runner, shared with the test cluster's node agent), ``attachments`` (a pod's CNI
attachments and their repair) and ``nodes`` (the node namespaces, the underlay joining them, VXLAN tunnels).
"""
