package agent

import "testing"

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bootFlags
	}{
		{"console=ttyS0 quiet panic=-1", bootFlags{}},
		{"console=ttyS0 runv.debug=1\n", bootFlags{Debug: true}},
		{"runv.probe=1 runv.debug=0", bootFlags{Probe: true}},
		{"runv.debug runv.probe=true", bootFlags{Probe: true}},
		{"xrunv.debug=1 runv.debugx=1", bootFlags{}},
		{"tsc=reliable runv.trace=1", bootFlags{Trace: true}},
		{"runv.exec=libcontainer", bootFlags{LibcontainerExec: true}},
		{"runv.exec=helper runv.exec", bootFlags{}},
		{"runv.exec=oneshot", bootFlags{OneShotExec: true}},
		{"runv.create=libcontainer", bootFlags{LibcontainerCreate: true}},
		{"runv.create=engine runv.create", bootFlags{}},
		{"runv.ports=vport0p1,vport0p2", bootFlags{ControlPort: "vport0p1", StreamPort: "vport0p2"}},
		{"runv.ports=vport12p3,vport1p10 quiet", bootFlags{ControlPort: "vport12p3", StreamPort: "vport1p10"}},
		{"runv.ports=vport0p1,vport0p2 runv.ports=vport0p1", bootFlags{}},
		{"runv.ports=vport0p1", bootFlags{}},
		{"runv.ports=vport0p1,vport0p2,vport0p3", bootFlags{}},
		{"runv.ports=vport0p1,../sda", bootFlags{}},
		{"runv.ports=vport0p1,vportp2", bootFlags{}},
		{"runv.ports=vport0p1,vport0p", bootFlags{}},
		{"runv.ports=ttyS0,vport0p2", bootFlags{}},
	} {
		if got := parseCmdline(tc.in); got != tc.want {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}
