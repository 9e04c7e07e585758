package agent

import (
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

// Every command the host sends has the agent's handler; the guest's own messages do not.
func TestAgentHandlesEveryCommand(t *testing.T) {
	a := &Agent{}
	for _, typ := range []agentproto.MsgType{
		agentproto.MsgGetVersion, agentproto.MsgPing, agentproto.MsgStartPod, agentproto.MsgDestroyPod,
		agentproto.MsgNewContainer, agentproto.MsgStartContainer, agentproto.MsgExecCmd, agentproto.MsgSignalProcess,
		agentproto.MsgWinSize, agentproto.MsgCloseStdin, agentproto.MsgRemoveContainer, agentproto.MsgPauseContainer,
		agentproto.MsgResumeContainer, agentproto.MsgListProcesses, agentproto.MsgStats, agentproto.MsgUpdateContainer,
		agentproto.MsgOnlineCPUMem, agentproto.MsgSetupNetwork, agentproto.MsgWarmup, agentproto.MsgPortForward,
		agentproto.MsgCloseForward,
	} {
		if a.handler(typ) == nil {
			t.Errorf("no handler for %s", typ)
		}
	}
	for _, typ := range []agentproto.MsgType{agentproto.MsgReady, agentproto.MsgAck, agentproto.MsgError, agentproto.MsgProcessExit} {
		if a.handler(typ) != nil {
			t.Errorf("a handler for %s, which only the guest sends", typ)
		}
	}
}
