"""hmseg_ros: ROS 2 nodes around the hmseg_core runtime (camera in, label masks out)."""
