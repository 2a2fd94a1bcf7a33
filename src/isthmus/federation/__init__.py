"""Federation: clusters exchange the routes of networks with matching route targets over BGP VPNv4."""
